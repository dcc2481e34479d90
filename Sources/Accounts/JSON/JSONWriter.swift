/// Serialises a ``JSONValue`` in member order. Used for every FHIR response so the output is
/// deterministic (tests compare it, the SAS logs it) and `_pretty` is a flag away.
public struct JSONWriter: Sendable {
    public var pretty: Bool

    public init(pretty: Bool = false) {
        self.pretty = pretty
    }

    public func encode(_ value: JSONValue) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(1024)
        write(value, into: &output, indent: 0)
        if pretty { output.append(0x0A) }
        return output
    }

    public func string(_ value: JSONValue) -> String {
        String(decoding: encode(value), as: UTF8.self)
    }

    private func newline(_ output: inout [UInt8], indent: Int) {
        guard pretty else { return }
        output.append(0x0A)
        output.append(contentsOf: repeatElement(0x20, count: indent * 2))
    }

    private func write(_ value: JSONValue, into output: inout [UInt8], indent: Int) {
        switch value {
        case .null: output.append(contentsOf: Array("null".utf8))
        case .bool(let flag): output.append(contentsOf: Array((flag ? "true" : "false").utf8))
        case .number(let text): output.append(contentsOf: Array(text.utf8))
        case .string(let text): Self.writeString(text, into: &output)
        case .array(let elements):
            output.append(UInt8(ascii: "["))
            for (position, element) in elements.enumerated() {
                if position > 0 { output.append(UInt8(ascii: ",")) }
                newline(&output, indent: indent + 1)
                write(element, into: &output, indent: indent + 1)
            }
            if !elements.isEmpty { newline(&output, indent: indent) }
            output.append(UInt8(ascii: "]"))
        case .object(let object):
            output.append(UInt8(ascii: "{"))
            for (position, member) in object.members.enumerated() {
                if position > 0 { output.append(UInt8(ascii: ",")) }
                newline(&output, indent: indent + 1)
                Self.writeString(member.key, into: &output)
                output.append(UInt8(ascii: ":"))
                if pretty { output.append(0x20) }
                write(member.value, into: &output, indent: indent + 1)
            }
            if !object.isEmpty { newline(&output, indent: indent) }
            output.append(UInt8(ascii: "}"))
        }
    }

    static let hexDigits = Array("0123456789abcdef".utf8)

    /// Escapes what RFC 8259 requires (quote, backslash, C0 controls), and also what a
    /// terminal or a log viewer would act on though JSON allows it raw: DEL, the C1 controls
    /// (U+009B is an 8-bit CSI to xterm), U+2028/U+2029, the bidirectional controls and the
    /// invisible characters (zero-width ones, U+FEFF, the tag characters). JSON
    /// logs and the CLI's `--json` output carry client-supplied strings (a user agent, a
    /// certificate subject). Other characters stay UTF-8.
    static func writeString(_ text: String, into output: inout [UInt8]) {
        output.append(UInt8(ascii: "\""))
        if text.utf8.withContiguousStorageIfAvailable({ escape($0, into: &output) }) == nil {
            escape(Array(text.utf8), into: &output)
        }
        output.append(UInt8(ascii: "\""))
    }

    private static func escape<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes, into output: inout [UInt8]) where Bytes.Index == Int {
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""): output.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): output.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: output.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: output.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: output.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20, 0x7F: unicodeEscape(UInt16(byte), into: &output)
            case 0xC2 where index + 1 < bytes.endIndex && (0x80...0x9F).contains(bytes[index + 1]):
                // A C1 control, U+0080–U+009F.
                unicodeEscape(UInt16(bytes[index + 1]), into: &output)
                index += 2
                continue
            case 0xD8 where index + 1 < bytes.endIndex && bytes[index + 1] == 0x9C:
                // U+061C ARABIC LETTER MARK, a bidirectional control.
                unicodeEscape(0x061C, into: &output)
                index += 2
                continue
            case 0xEF where index + 2 < bytes.endIndex && bytes[index + 1] == 0xBB && bytes[index + 2] == 0xBF:
                // U+FEFF ZERO WIDTH NO-BREAK SPACE (a byte order mark), invisible.
                unicodeEscape(0xFEFF, into: &output)
                index += 3
                continue
            case 0xF3 where index + 3 < bytes.endIndex && bytes[index + 1] == 0xA0 && (bytes[index + 2] == 0x80 || bytes[index + 2] == 0x81):
                // U+E0000–U+E007F, the tag characters: invisible, they can carry hidden text.
                // Outside the BMP: a surrogate pair, as RFC 8259 writes it.
                let scalar = 0xE0000 + (UInt32(bytes[index + 2] & 0x3F) << 6 | UInt32(bytes[index + 3] & 0x3F))
                unicodeEscape(UInt16(0xD800 + ((scalar - 0x10000) >> 10)), into: &output)
                unicodeEscape(UInt16(0xDC00 + ((scalar - 0x10000) & 0x3FF)), into: &output)
                index += 4
                continue
            case 0xE2 where index + 2 < bytes.endIndex:
                // A Swift string is valid UTF-8: two continuation bytes follow.
                let scalar = UInt16(byte & 0x0F) << 12 | UInt16(bytes[index + 1] & 0x3F) << 6 | UInt16(bytes[index + 2] & 0x3F)
                if isInvisibleControl(scalar) {
                    unicodeEscape(scalar, into: &output)
                    index += 3
                    continue
                }
                output.append(byte)
            default: output.append(byte)
            }
            index += 1
        }
    }

    /// The three-byte ones starting E2: U+200E/F, U+2028/9 (JavaScript and some viewers break
    /// lines there), U+202A–E and U+2066–9: the bidirectional controls, which reorder what is
    /// displayed around them (U+061C, two bytes, has its own case); and the invisible ones,
    /// which hide text on screen: U+200B–D (zero-width space, non-joiner, joiner) and
    /// U+2060–4 (word joiner, invisible operators).
    private static func isInvisibleControl(_ scalar: UInt16) -> Bool {
        (0x200B...0x200F).contains(scalar) || (0x2028...0x202E).contains(scalar) || (0x2060...0x2064).contains(scalar)
            || (0x2066...0x2069).contains(scalar)
    }

    private static func unicodeEscape(_ scalar: UInt16, into output: inout [UInt8]) {
        output.append(contentsOf: [0x5C, UInt8(ascii: "u")])
        for shift in stride(from: 12, through: 0, by: -4) {
            output.append(hexDigits[Int((scalar >> UInt16(shift)) & 0x0F)])
        }
    }
}
