import Accounts
import Testing

@Suite("Identifier model")
struct IdentifierTests {
    @Test(arguments: ["810002673899", "3456780581/11242343", "0751012345", "02A1234567", "5123456789/abc-12", "41234567890123/X"])
    func acceptsNationalIDForms(_ value: String) {
        #expect(NationalID(value) != nil)
    }

    @Test(arguments: ["81000267389", "8100026738990", "910002673899", "81000267389X", "075101234", "3456780581/", "3456780581/a b",
                      "/11242343", "7456780581/1", "", "b6e39355-8a61-4556-b340-36f7b95fec6a", " 810002673899"])
    func refusesOtherNationalIDs(_ value: String) {
        #expect(NationalID(value) == nil)
    }

    @Test func nationalIDForms() {
        #expect(NationalID("810002673899")?.form == .rpps)
        #expect(NationalID("0751012345")?.form == .adeli)
        #expect(NationalID("3456780581/11242343")?.form == .structureScoped)
    }

    @Test(arguments: ["b6e39355-8a61-4556-b340-36f7b95fec6a", "1ef1c748-01a3-6180-b098-73283ce4e5b1", "B6E39355-8A61-4556-B340-36F7B95FEC6A"])
    func acceptsUUIDs(_ value: String) {
        #expect(SASTechnicalID(value)?.value == value.lowercased())
    }

    @Test(arguments: ["b6e39355-8a61-4556-b340-36f7b95fec6", "b6e39355x8a61-4556-b340-36f7b95fec6a", "b6e39355-8a61-4556-b340-36f7b95fec6g",
                      "{b6e39355-8a61-4556-b340-36f7b95fec6a}", "810002673899", ""])
    func refusesNonUUIDs(_ value: String) {
        #expect(SASTechnicalID(value) == nil)
    }

    @Test(arguments: ["jules.marius@test.com", "a+b@x.fr", "O'Brien@example.co.uk", "x@sub-domain.example.org", "a@exemple.xn--p1ai", "a@x.XN--P1AI"])
    func acceptsEmails(_ value: String) {
        #expect(EmailAddress(value) != nil)
    }

    @Test(arguments: ["", "no-at.example.com", "@x.fr", "a@", "a@b", "a..b@x.fr", ".a@x.fr", "a@-x.fr", "a b@x.fr", "a@x.f1", "a@x.xn--", "a@x.xn-a", "a@x..fr", "é@x.fr"])
    func refusesInvalidEmails(_ value: String) {
        #expect(EmailAddress(value) == nil)
    }

    @Test func emailKeyIsCaseFolded() {
        #expect(EmailAddress("Jules.Marius@Test.COM")?.key == "jules.marius@test.com")
    }
}
