@testable import AccountServer
import Testing

/// Escaping of values interpolated into pages: by Unicode scalar, since the browser's parser
/// reads scalars, not Swift's grapheme clusters.
@Suite("HTML escaping")
struct HTMLEscapingTests {
    /// A quote, angle bracket or ampersand followed by a combining mark is one `Character`
    /// equal to none of them; it must be escaped all the same, or `"\u{301}` would end an
    /// attribute value and let what follows become attributes of the element.
    @Test func markupScalarsAreEscapedUnderCombiningMarks() {
        let cases: [(String, String)] = [
            ("\"\u{301}", "&quot;\u{301}"), ("'\u{301}", "&#39;\u{301}"), ("<\u{338}", "&lt;\u{338}"),
            (">\u{338}", "&gt;\u{338}"), ("&\u{301}", "&amp;\u{301}"), ("a\"b'c<d>e&f", "a&quot;b&#39;c&lt;d&gt;e&amp;f"),
            ("Hélène Ôtez-moi ça", "Hélène Ôtez-moi ça"),
        ]
        for (input, expected) in cases {
            let html: HTML = "<input value=\"\(input)\">"
            #expect(Array(html.description.unicodeScalars) == Array("<input value=\"\(expected)\">".unicodeScalars), "\(input.unicodeScalars.map { String($0.value, radix: 16) })")
        }
        let hostile = "x\"\u{301} autofocus onfocus=alert(1) y='\u{301}\u{20DD}<\u{338}script>&\u{301}#34;"
        #expect(!HTML.escape(hostile).unicodeScalars.contains { "\"'<>".unicodeScalars.contains($0) }, "no markup scalar is left in the escaped text")
    }
}
