import Accounts
import Foundation
import Testing

/// Every seed and every input a fuzzer ever failed on, replayed through the fuzzers' own
/// checks (``FuzzProperties``): `Fuzz/corpus/<target>/` and `Fuzz/regressions/<target>/`.
/// A crash found by `scripts/fuzz.sh` is fixed, then its input is added to
/// `Fuzz/regressions/<target>/` and stays here for good.
@Suite("Fuzz corpus and regressions")
struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz")

    static func inputs(_ target: String) -> [URL] {
        ["corpus", "regressions"].flatMap { folder in
            (try? FileManager.default.contentsOfDirectory(at: root.appendingPathComponent("\(folder)/\(target)"), includingPropertiesForKeys: nil)) ?? []
        }.filter { !$0.lastPathComponent.hasPrefix(".") && $0.lastPathComponent != "README.md" }
    }

    @Test(arguments: ["practitioner", "identifier-query"])
    func everyKnownInputHoldsTheProperties(target: String) throws {
        let files = Self.inputs(target)
        #expect(files.count >= 4, "the seed corpus of \(target) is in the repository")
        let check = target == "practitioner" ? FuzzProperties.practitioner : FuzzProperties.identifierQuery
        for file in files {
            let failure = check(Array(try Data(contentsOf: file)))
            #expect(failure == nil, "\(file.lastPathComponent): \(failure ?? "")")
        }
    }

    /// The checks are not vacuous: inputs that must be refused, and the published examples
    /// that must be accepted, go through the same code.
    @Test func theChecksSeeAcceptanceAndRefusal() throws {
        let example = try Data(contentsOf: Self.root.appendingPathComponent("corpus/practitioner/regulator-1-national-id.json"))
        #expect(try PractitionerValidator().validate(body: Array(example)).nationalID != nil)
        for hostile in ["", "{", "[]", #"{"resourceType":"Practitioner","a":1,"a":2}"#, String(repeating: "[", count: 100_000),
                        "{\"resourceType\":\"Practitioner\",\"name\":\"\u{FFFF}\"}", "\u{0}"] {
            #expect(FuzzProperties.practitioner(Array(hostile.utf8)) == nil)
            #expect(throws: FHIRError.self) { try PractitionerValidator().validate(body: Array(hostile.utf8)) }
        }
        #expect(FuzzProperties.practitioner([0xFF, 0xFE, 0x7B]) == nil, "invalid UTF-8")
        for query in ["identifier=%", "identifier=%zz", "identifier=%C3%28", "identifier=a|b|c", "&&&", "="] {
            #expect(FuzzProperties.identifierQuery(Array(query.utf8)) == nil, "\(query)")
        }
    }
}
