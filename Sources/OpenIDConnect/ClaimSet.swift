import Foundation
import JWTKit

/// One JSON value of a token or userinfo claim set, kept as the provider sent it: PSC's
/// claims are not all strings (`SubjectRefPro` is an object, `aud` may be an array).
public enum ClaimValue: Sendable, Equatable, Codable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case array([ClaimValue])
    case object([String: ClaimValue])
    case null

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([ClaimValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: ClaimValue].self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        case .null: try container.encodeNil()
        }
    }

    /// The value as a single string: a string, or a one-element array of strings (some
    /// providers, LemonLDAP::NG among them, turn multi-valued attributes into arrays).
    public var singleString: String? {
        switch self {
        case .string(let value): value
        case .array(let values) where values.count == 1: values[0].singleString
        default: nil
        }
    }

    /// Strings of a string or an array of strings (the `aud` claim's two forms).
    public var strings: [String]? {
        switch self {
        case .string(let value): [value]
        case .array(let values):
            values.reduce(into: [String]?.some([])) { result, value in
                if case .string(let text) = value { result?.append(text) } else { result = nil }
            }
        default: nil
        }
    }

    public var seconds: Double? { if case .number(let value) = self { value } else { nil } }
}

/// A JWT payload or a userinfo document: every claim, checked by the relying party itself
/// (issuer, audience, times, nonce, acr) rather than by the JWT library, so that every
/// refusal says which claim failed.
public struct ClaimSet: JWTPayload, Sendable, Equatable {
    public var claims: [String: ClaimValue]

    public init(claims: [String: ClaimValue]) { self.claims = claims }

    public init(from decoder: any Decoder) throws {
        claims = try decoder.singleValueContainer().decode([String: ClaimValue].self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(claims)
    }

    /// Signature checks are done by the key collection; claims by ``RelyingParty``.
    public func verify(using algorithm: some JWTAlgorithm) async throws {}

    public subscript(_ name: String) -> ClaimValue? { claims[name] }

    public func string(_ name: String) -> String? { claims[name]?.singleString }
}
