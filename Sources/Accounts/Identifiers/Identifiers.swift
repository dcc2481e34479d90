/// The code systems and OIDs of the SAS specification, in one place so that validation,
/// search and rendering cannot disagree.
public enum FHIRSystems {
    /// `Practitioner.identifier.system` of the national id (IDNPS).
    public static let nationalID = "urn:oid:1.2.250.1.71.4.2.1"
    /// `Practitioner.identifier.system` of the SAS technical id, and `meta.source` of every SAS body.
    public static let sasPlatform = "urn:oid:1.2.250.1.213.3.6"
    /// Code system of `identifier.type` (HL7 v2 table 0203, French extension).
    public static let identifierType = "http://interopsante.org/fhir/CodeSystem/fr-v2-0203"
    /// The profile the SAS bodies claim and our resources declare.
    public static let practitionerRegulProfile =
        "https://interop.esante.gouv.fr/ig/fhir/sas/StructureDefinition/FrPractitionerRegul"
}

/// A regulator's prefixed national identifier (IDNPS): `8` + RPPS, `0` + ADELI, or a
/// structure-scoped form `<prefix digit><structure id>/<local id>`.
///
/// Kept as its own type so that a technical id can never be stored or searched as a national
/// id by mistake.
public struct NationalID: Sendable, Hashable, CustomStringConvertible {
    public let value: String

    /// The forms the digest lists. The RPPS check digit is deliberately not verified: the SAS
    /// test data (e.g. `810002673899`) does not always carry a valid Luhn key.
    public enum Form: String, Sendable {
        case rpps, adeli, structureScoped
    }

    public let form: Form

    /// Returns `nil` when the text matches none of the IDNPS forms.
    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count <= 80, let first = bytes.first else { return nil }
        func digits(_ slice: ArraySlice<UInt8>) -> Bool { slice.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }
        if first == UInt8(ascii: "8"), bytes.count == 12, digits(bytes[1...]) {
            form = .rpps
        } else if first == UInt8(ascii: "0"), bytes.count == 10, Self.isADELI(bytes[1...]) {
            form = .adeli
        } else if let slash = bytes.firstIndex(of: UInt8(ascii: "/")),
                  (UInt8(ascii: "1")...UInt8(ascii: "6")).contains(first),
                  Self.isStructureID(bytes[1..<slash]),
                  Self.isLocalID(bytes[(slash + 1)...]) {
            form = .structureScoped
        } else {
            return nil
        }
        value = text
    }

    /// ADELI: two-character département (digits, or 2A/2B for Corsica) then seven digits.
    private static func isADELI(_ bytes: ArraySlice<UInt8>) -> Bool {
        let chars = Array(bytes)
        guard chars.count == 9 else { return false }
        let isDigit = { (byte: UInt8) in byte >= 0x30 && byte <= 0x39 }
        let departementOK = (isDigit(chars[0]) && isDigit(chars[1]))
            || (chars[0] == UInt8(ascii: "2") && (chars[1] == UInt8(ascii: "A") || chars[1] == UInt8(ascii: "B")))
        return departementOK && chars[2...].allSatisfy(isDigit)
    }

    /// FINESS (9 characters, may contain 2A/2B), SIREN (9 digits) or SIRET (14 digits).
    private static func isStructureID(_ bytes: ArraySlice<UInt8>) -> Bool {
        (9...14).contains(bytes.count) && bytes.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) }
    }

    /// The structure's own identifier for the professional: printable, no spaces or slashes.
    private static func isLocalID(_ bytes: ArraySlice<UInt8>) -> Bool {
        (1...64).contains(bytes.count) && bytes.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A)
                || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
        }
    }

    public var description: String { value }
}

/// The SAS platform's technical identifier (INTRN): a UUID in canonical 8-4-4-4-12 form, any
/// version. Stored in lower case so that a search in either case finds the account.
public struct SASTechnicalID: Sendable, Hashable, CustomStringConvertible {
    public let value: String

    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return nil }
        for (position, byte) in bytes.enumerated() {
            switch position {
            case 8, 13, 18, 23:
                guard byte == UInt8(ascii: "-") else { return nil }
            default:
                let isHex = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x66) || (byte >= 0x41 && byte <= 0x46)
                guard isHex else { return nil }
            }
        }
        value = text.lowercased()
    }

    public var description: String { value }
}

/// Either kind of identifier the SAS addresses an account by. Its `system` is the
/// FHIR identifier system, its `value` the normalised value.
public enum RegulatorIdentifier: Sendable, Hashable, CustomStringConvertible {
    case national(NationalID)
    case sasTechnical(SASTechnicalID)

    /// The identifier kind, as stored in the database and shown in audit records.
    public enum Kind: String, Sendable, CaseIterable {
        case national = "IDNPS"
        case sasTechnical = "INTRN"

        public var system: String {
            switch self {
            case .national: return FHIRSystems.nationalID
            case .sasTechnical: return FHIRSystems.sasPlatform
            }
        }

        /// The `identifier.type` code the profile fixes for this system.
        public var typeCode: String { rawValue }

        public init?(system: String) {
            switch system {
            case FHIRSystems.nationalID: self = .national
            case FHIRSystems.sasPlatform: self = .sasTechnical
            default: return nil
            }
        }
    }

    /// Parses a value for a given kind; `nil` when the value has the wrong format.
    public init?(kind: Kind, value: String) {
        switch kind {
        case .national:
            guard let id = NationalID(value) else { return nil }
            self = .national(id)
        case .sasTechnical:
            guard let id = SASTechnicalID(value) else { return nil }
            self = .sasTechnical(id)
        }
    }

    public var kind: Kind {
        switch self {
        case .national: return .national
        case .sasTechnical: return .sasTechnical
        }
    }

    public var system: String { kind.system }

    public var value: String {
        switch self {
        case .national(let id): return id.value
        case .sasTechnical(let id): return id.value
        }
    }

    /// `system|value`, the FHIR token form used in URLs and audit records.
    public var description: String { "\(system)|\(value)" }

    /// What a format error should tell the SAS about the expected value.
    public static func formatHint(for kind: Kind) -> String {
        switch kind {
        case .national:
            return "a prefixed national id: 8 + 11-digit RPPS, 0 + ADELI, or <prefix><structure id>/<local id>"
        case .sasTechnical:
            return "a UUID in canonical form (8-4-4-4-12 hexadecimal digits)"
        }
    }
}

/// An e-mail address as the sign-in login: syntax checked (ASCII, RFC 5321 lengths, dotted
/// domain), compared case-insensitively through ``key``.
public struct EmailAddress: Sendable, Hashable, CustomStringConvertible {
    public let value: String

    /// The case-folded form used for uniqueness and sign-in lookup.
    public var key: String { value.lowercased() }

    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count <= 254, let at = bytes.lastIndex(of: UInt8(ascii: "@")) else { return nil }
        let local = bytes[..<at]
        let domain = bytes[(at + 1)...]
        guard (1...64).contains(local.count), Self.isLocalPart(local), Self.isDomain(domain) else { return nil }
        value = text
    }

    private static let localSpecials = Set("!#$%&'*+-/=?^_`{|}~.".utf8)

    private static func isLocalPart(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard bytes.first != UInt8(ascii: "."), bytes.last != UInt8(ascii: ".") else { return false }
        var previousDot = false
        for byte in bytes {
            let isAlnum = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            guard isAlnum || localSpecials.contains(byte) else { return false }
            if byte == UInt8(ascii: ".") {
                if previousDot { return false }
                previousDot = true
            } else {
                previousDot = false
            }
        }
        return true
    }

    private static func isDomain(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard (3...253).contains(bytes.count) else { return false }
        let labels = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard labels.count >= 2 else { return false }
        for label in labels {
            guard (1...63).contains(label.count), label.first != UInt8(ascii: "-"), label.last != UInt8(ascii: "-") else { return false }
            for byte in label {
                let ok = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == UInt8(ascii: "-")
                guard ok else { return false }
            }
        }
        // The top-level label is alphabetic, or an internationalised one in its ASCII form
        // (`xn--p1ai` for .рф), whose other labels' rules it already met.
        let top = labels.last!
        return top.allSatisfy { ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) }
            || (top.count > 4 && top.prefix(4).map { $0 | 0x20 } == Array("xn--".utf8))
    }

    public var description: String { value }
}
