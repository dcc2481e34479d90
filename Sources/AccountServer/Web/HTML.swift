/// HTML that is safe by construction: interpolated `String`s are escaped, interpolated
/// `HTML` is inserted as is. Pages are built from these, so forgetting to escape a value is
/// not possible.
struct HTML: ExpressibleByStringInterpolation, Sendable, CustomStringConvertible {
    private(set) var text: String

    init(stringLiteral value: String) { text = value }
    init(raw: String) { text = raw }

    init(stringInterpolation: Interpolation) { text = stringInterpolation.text }

    struct Interpolation: StringInterpolationProtocol {
        var text = ""
        init(literalCapacity: Int, interpolationCount: Int) { text.reserveCapacity(literalCapacity * 2) }
        mutating func appendLiteral(_ literal: String) { text += literal }
        mutating func appendInterpolation(_ value: String) { text += HTML.escape(value) }
        mutating func appendInterpolation(_ value: HTML) { text += value.text }
        mutating func appendInterpolation(_ values: [HTML]) { text += values.map(\.text).joined() }
        mutating func appendInterpolation(_ value: Int) { text += String(value) }
    }

    var description: String { text }

    /// Escapes by Unicode scalar, not by `Character`: a quote followed by a combining mark
    /// (`"\u{301}`) is one `Character` that equals no `"`, yet the browser's parser sees the
    /// quote and ends the attribute there.
    static func escape(_ value: String) -> String {
        var result = String.UnicodeScalarView()
        for scalar in value.unicodeScalars {
            switch scalar {
            case "&": result.append(contentsOf: "&amp;".unicodeScalars)
            case "<": result.append(contentsOf: "&lt;".unicodeScalars)
            case ">": result.append(contentsOf: "&gt;".unicodeScalars)
            case "\"": result.append(contentsOf: "&quot;".unicodeScalars)
            case "'": result.append(contentsOf: "&#39;".unicodeScalars)
            default: result.append(scalar)
            }
        }
        return String(result)
    }
}
