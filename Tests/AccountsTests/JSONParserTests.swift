import Accounts
import Testing

@Suite("Strict JSON parser")
struct JSONParserTests {
    let parser = JSONParser()

    func parse(_ text: String) throws -> JSONValue { try parser.parse(Array(text.utf8)) }

    @Test func parsesObjectsInOrderWithEscapes() throws {
        let value = try parse(#"{"b":1,"a":[true,false,null],"s":"é\u00e9\n\ud83d\ude00","n":-1.5e3}"#)
        guard case .object(let object) = value else { Issue.record("not an object"); return }
        #expect(object.keys == ["b", "a", "s", "n"])
        #expect(object["s"] == .string("éé\n😀"))
        #expect(object["n"] == .number("-1.5e3"))
        #expect(object["a"] == .array([.bool(true), .bool(false), .null]))
    }

    @Test(arguments: [
        #"{"a":1,"a":2}"#,             // duplicate key
        #"{"a":1,}"#,                  // trailing comma
        #"{"a":1} x"#,                 // trailing data
        #"{'a':1}"#,                   // single quotes
        #"{"a":01}"#,                  // leading zero
        #"{"a":"\ud800"}"#,            // lone surrogate
        #"{"a":"\x"}"#,                // bad escape
        "{\"a\":\"tab\there\"}",       // raw control character
        #"{"a":tru}"#,                 // bad literal
        "",                            // empty
        #"{"a":1"#,                    // unterminated
    ])
    func refusesInvalidDocuments(_ text: String) {
        #expect(throws: JSONParseError.self) { try parse(text) }
    }

    @Test func refusesInvalidUTF8() {
        let bytes: [UInt8] = Array(#"{"a":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        #expect(throws: JSONParseError.self) { try parser.parse(bytes) }
    }

    /// Invalid UTF-8 in a Practitioner's string is refused with the element it is in, like
    /// every other parse error.
    @Test func invalidUTF8NamesItsElement() {
        let bytes: [UInt8] = Array(#"{"resourceType":"Practitioner","name":[{"family":""#.utf8) + [0xC3, 0x28] + Array(#""}]}"#.utf8)
        do {
            _ = try PractitionerValidator().validate(body: bytes)
            Issue.record("refused")
        } catch {
            #expect(error.issues.first?.expression == ["Practitioner.name[0].family"], "\(error)")
        }
    }

    @Test func limitsNestingDepth() throws {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: JSONParseError.self) { try parse(deep) }
        let fine = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        _ = try parse(fine)
    }

    /// What a terminal or a log viewer would act on leaves as `\u` escapes, though JSON
    /// allows it raw: DEL, C1 controls (U+009B is an 8-bit CSI), U+2028/9 and the bidi
    /// controls. The text reads back the same; other characters stay UTF-8.
    @Test func terminalControlsAreEscaped() throws {
        let text = "a\u{7F}b\u{9B}31m\u{85}c\u{2028}\u{2029}d\u{202E}e\u{200F}\u{2066}f\u{2069}\u{061C}é€😀\u{A0}\u{2030}"
        let written = JSONWriter().string(.string(text))
        #expect(written == #""a\u007fb\u009b31m\u0085c\u2028\u2029d\u202ee\u200f\u2066f\u2069\u061cé€😀\#u{A0}‰""#)
        #expect(!written.unicodeScalars.contains { $0.properties.generalCategory == .control || (0x2028...0x202E).contains($0.value) })
        #expect(try parse(written) == .string(text))
        // Invisible characters too: zero-width ones, word joiner, U+FEFF, tag characters
        // (outside the BMP: a surrogate pair); a visible neighbour (U+2010, U+FEFE) stays.
        let hidden = "x\u{200B}\u{200D}\u{2060}\u{2064}\u{FEFF}\u{E0041}\u{E007F}\u{2010}\u{FEFE}\u{E0100}"
        let hiddenWritten = JSONWriter().string(.string(hidden))
        #expect(hiddenWritten == #""x\u200b\u200d\u2060\u2064\ufeff\udb40\udc41\udb40\udc7f‐\#u{FEFE}\#u{E0100}""#, "\(hiddenWritten)")
        #expect(try parse(hiddenWritten) == .string(hidden))
    }

    @Test func writerRoundTrips() throws {
        let text = #"{"a":"quote\" back\\ nl\n ctl\u0001","b":[1,2.5,{"c":null}]}"#
        let value = try parse(text)
        #expect(JSONWriter().string(value) == text)
        #expect(try parse(JSONWriter(pretty: true).string(value)) == value)
    }
}
