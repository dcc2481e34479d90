/// Why a body is not acceptable JSON, with the byte offset where the problem was seen, so
/// the OperationOutcome can say where to look.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var offset: Int
    public var reason: String
    /// Where in the document, as a FHIRPath-like suffix of the root (`.identifier[0].value`;
    /// empty at the root): an OperationOutcome names the element, not only a byte offset.
    public var path: String = ""

    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

/// A strict RFC 8259 parser with the limits a public endpoint needs: valid UTF-8 only,
/// duplicate keys refused (FHIR forbids them and they hide ambiguity), bounded nesting depth.
public struct JSONParser: Sendable {
    /// Nesting deeper than this is refused; a Practitioner needs about six levels.
    public var maximumDepth: Int

    public init(maximumDepth: Int = 64) {
        self.maximumDepth = maximumDepth
    }

    /// Parses a whole document; trailing non-whitespace is an error.
    public func parse(_ bytes: some Collection<UInt8>) throws(JSONParseError) -> JSONValue {
        let buffer = Array(bytes)
        var state = State(bytes: buffer, maximumDepth: maximumDepth)
        // A UTF-8 byte-order mark is tolerated, as RFC 8259 allows parsers to do.
        if buffer.starts(with: [0xEF, 0xBB, 0xBF]) { state.index = 3 }
        state.skipWhitespace()
        let value = try state.parseValue(depth: 0)
        state.skipWhitespace()
        guard state.index == buffer.count else {
            throw JSONParseError(offset: state.index, reason: "unexpected data after the end of the document")
        }
        return value
    }

    private struct State {
        let bytes: [UInt8]
        let maximumDepth: Int
        var index = 0

        init(bytes: [UInt8], maximumDepth: Int) {
            self.bytes = bytes
            self.maximumDepth = maximumDepth
        }

        /// The members and elements being parsed, outermost first.
        var path: [PathComponent] = []

        enum PathComponent {
            case member(String)
            case element(Int)
        }

        func fail(_ reason: String, at offset: Int? = nil, member: String? = nil) -> JSONParseError {
            var text = ""
            for component in path {
                switch component {
                case .member(let key): text += ".\(key)"
                case .element(let index): text += "[\(index)]"
                }
            }
            if let member { text += ".\(member)" }
            return JSONParseError(offset: offset ?? index, reason: reason, path: text)
        }

        mutating func skipWhitespace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x09, 0x0A, 0x0D: index += 1
                default: return
                }
            }
        }

        mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
            guard index < bytes.count else { throw fail("unexpected end of document") }
            switch bytes[index] {
            case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
            case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
            case UInt8(ascii: "\""): return .string(try parseString())
            case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
            case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
            case UInt8(ascii: "n"): try expectLiteral("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
            default: throw fail("unexpected character")
            }
        }

        mutating func expectLiteral(_ literal: String) throws(JSONParseError) {
            let literalBytes = Array(literal.utf8)
            guard index + literalBytes.count <= bytes.count else { throw fail("unexpected end of document") }
            guard bytes[index..<(index + literalBytes.count)].elementsEqual(literalBytes) else { throw fail("invalid literal") }
            index += literalBytes.count
        }

        mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
            guard depth <= maximumDepth else { throw fail("nesting deeper than \(maximumDepth) levels") }
            index += 1
            var members: [JSONMember] = []
            var seen = Set<String>()
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return .object(JSONObject(members))
            }
            while true {
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else {
                    throw fail("expected a member name in double quotes")
                }
                let keyOffset = index
                let key = try parseString()
                guard seen.insert(key).inserted else {
                    throw fail("duplicate member name \"\(key)\"", at: keyOffset, member: key)
                }
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                index += 1
                skipWhitespace()
                path.append(.member(key))
                let value = try parseValue(depth: depth)
                path.removeLast()
                members.append(JSONMember(key, value))
                skipWhitespace()
                guard index < bytes.count else { throw fail("unexpected end of document inside an object") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                } else if bytes[index] == UInt8(ascii: "}") {
                    index += 1
                    return .object(JSONObject(members))
                } else {
                    throw fail("expected ',' or '}'")
                }
            }
        }

        mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
            guard depth <= maximumDepth else { throw fail("nesting deeper than \(maximumDepth) levels") }
            index += 1
            var elements: [JSONValue] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return .array(elements)
            }
            while true {
                skipWhitespace()
                path.append(.element(elements.count))
                elements.append(try parseValue(depth: depth))
                path.removeLast()
                skipWhitespace()
                guard index < bytes.count else { throw fail("unexpected end of document inside an array") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                } else if bytes[index] == UInt8(ascii: "]") {
                    index += 1
                    return .array(elements)
                } else {
                    throw fail("expected ',' or ']'")
                }
            }
        }

        mutating func parseNumber() throws(JSONParseError) -> String {
            let start = index
            if bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count else { throw fail("incomplete number") }
            if bytes[index] == UInt8(ascii: "0") {
                index += 1
            } else if isDigit(bytes[index]) {
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            } else {
                throw fail("invalid number")
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                guard index < bytes.count, isDigit(bytes[index]) else { throw fail("invalid number fraction") }
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard index < bytes.count, isDigit(bytes[index]) else { throw fail("invalid number exponent") }
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }

        func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

        /// Parses a string starting at the opening quote. Raw bytes are validated as UTF-8;
        /// escapes are decoded, and lone surrogates are refused.
        mutating func parseString() throws(JSONParseError) -> String {
            let start = index
            index += 1
            var scalars = String.UnicodeScalarView()
            var runStart = index
            func flushRun(_ end: Int, into scalars: inout String.UnicodeScalarView) throws(JSONParseError) {
                guard end > runStart else { return }
                guard let text = String(validating: bytes[runStart..<end], as: UTF8.self) else {
                    throw fail("invalid UTF-8 in a string", at: runStart)
                }
                scalars.append(contentsOf: text.unicodeScalars)
            }
            while true {
                guard index < bytes.count else { throw fail("unterminated string", at: start) }
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    try flushRun(index, into: &scalars)
                    index += 1
                    return String(scalars)
                }
                if byte < 0x20 { throw fail("control character in a string") }
                if byte == UInt8(ascii: "\\") {
                    try flushRun(index, into: &scalars)
                    index += 1
                    guard index < bytes.count else { throw fail("unterminated escape") }
                    let escape = bytes[index]
                    index += 1
                    switch escape {
                    case UInt8(ascii: "\""): scalars.append("\"")
                    case UInt8(ascii: "\\"): scalars.append("\\")
                    case UInt8(ascii: "/"): scalars.append("/")
                    case UInt8(ascii: "b"): scalars.append("\u{08}")
                    case UInt8(ascii: "f"): scalars.append("\u{0C}")
                    case UInt8(ascii: "n"): scalars.append("\n")
                    case UInt8(ascii: "r"): scalars.append("\r")
                    case UInt8(ascii: "t"): scalars.append("\t")
                    case UInt8(ascii: "u"):
                        let first = try parseHex4()
                        if (0xD800...0xDBFF).contains(first) {
                            guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                                throw fail("lone surrogate in a \\u escape")
                            }
                            index += 2
                            let second = try parseHex4()
                            guard (0xDC00...0xDFFF).contains(second) else { throw fail("invalid surrogate pair") }
                            let value = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                            scalars.append(Unicode.Scalar(value)!)
                        } else if (0xDC00...0xDFFF).contains(first) {
                            throw fail("lone surrogate in a \\u escape")
                        } else {
                            scalars.append(Unicode.Scalar(first)!)
                        }
                    default:
                        throw fail("invalid escape sequence")
                    }
                    runStart = index
                    continue
                }
                index += 1
            }
        }

        mutating func parseHex4() throws(JSONParseError) -> UInt32 {
            guard index + 4 <= bytes.count else { throw fail("incomplete \\u escape") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[index]
                let digit: UInt32
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
                default: throw fail("invalid hexadecimal digit in a \\u escape")
                }
                value = value << 4 | digit
                index += 1
            }
            return value
        }
    }
}
