/// A JSON document kept exactly as received: members stay in order and numbers keep their
/// lexical form, so validation can point at the offending element and responses are stable.
///
/// FHIR's JSON rules (no duplicate keys, no `null`, no empty strings or arrays) are stricter
/// than what `JSONSerialization` enforces, which is why the product parses JSON itself.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The number's text as it appeared in the document (always valid RFC 8259 syntax).
    case number(String)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    /// The JSON type's name, as used in error messages ("a string", "an array"...).
    public var typeDescription: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// One `"key": value` pair of a JSON object.
public struct JSONMember: Sendable, Equatable {
    public var key: String
    public var value: JSONValue

    public init(_ key: String, _ value: JSONValue) {
        self.key = key
        self.value = value
    }
}

/// An ordered JSON object. Keys are unique: the parser refuses duplicates and the builders
/// replace an existing key.
public struct JSONObject: Sendable, Equatable, ExpressibleByDictionaryLiteral {
    public private(set) var members: [JSONMember]

    public init() { self.members = [] }

    public init(_ members: [JSONMember]) { self.members = members }

    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.members = []
        for (key, value) in elements { self[key] = value }
    }

    /// Member lookup; FHIR objects are small, so a linear scan beats hashing here.
    public subscript(key: String) -> JSONValue? {
        get { members.first(where: { $0.key == key })?.value }
        set {
            if let index = members.firstIndex(where: { $0.key == key }) {
                if let newValue { members[index].value = newValue } else { members.remove(at: index) }
            } else if let newValue {
                members.append(JSONMember(key, newValue))
            }
        }
    }

    public var keys: [String] { members.map(\.key) }
    public var isEmpty: Bool { members.isEmpty }
}
