import Accounts
import Testing

@Suite("FrPractitionerRegul validation")
struct ValidatorTests {
    let validator = PractitionerValidator()

    /// Validates and returns the refusal, failing the test if the body was accepted.
    func refusal(_ body: JSONObject, sourceLocation: SourceLocation = #_sourceLocation) -> FHIRError? {
        do {
            _ = try validator.validate(.object(body))
            Issue.record("body was accepted", sourceLocation: sourceLocation)
            return nil
        } catch {
            return error
        }
    }

    func expectRefusal(_ body: JSONObject, _ category: FHIRError.Category, at expression: String,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        guard let error = refusal(body, sourceLocation: sourceLocation) else { return }
        #expect(error.category == category, "\(error)", sourceLocation: sourceLocation)
        #expect(error.issues.contains { $0.expression.contains(expression) }, "expected an issue at \(expression), got \(error)", sourceLocation: sourceLocation)
        #expect(error.issues.allSatisfy { !$0.diagnostics.isEmpty }, sourceLocation: sourceLocation)
    }

    @Test(arguments: ["regulator-1-national-id.json", "regulator-2-national-id-rpps.json", "regulator-3-deactivated.json", "regulator-4-sas-technical-id.json"])
    func acceptsPublishedExamples(_ name: String) throws {
        let record = try validator.validate(try Fixtures.example(name))
        #expect(!record.identifiers.isEmpty)
    }

    @Test func extractsFields() throws {
        let record = try validator.validate(try Fixtures.example("regulator-4-sas-technical-id.json"))
        #expect(record.sasTechnicalID?.value == "1ef1c748-01a3-6180-b098-73283ce4e5b1")
        #expect(record.nationalID == nil)
        #expect(record.active)
        #expect(record.familyName == "Loridon")
        #expect(record.givenName == "Sébastien")
        #expect(record.email.value == "sebastien.loridon@test.com")
        let deactivated = try validator.validate(try Fixtures.example("regulator-3-deactivated.json"))
        #expect(!deactivated.active)
    }

    @Test func toleratesUnknownElementsAndOtherIdentifierSystems() throws {
        var body = Fixtures.practitioner()
        body["gender"] = .string("male")
        body["extension"] = .array([.object(["url": .string("http://example.org/x"), "valueString": .string("y")])])
        body["identifier"] = .array([
            Fixtures.identifier(system: Fixtures.nationalSystem, code: "IDNPS", value: "810002673899"),
            .object(["system": .string("http://example.org/other"), "value": .string("42")]),
        ])
        let record = try validator.validate(.object(body))
        #expect(record.ignoredIdentifierSystems == ["http://example.org/other"])
        #expect(record.nationalID?.value == "810002673899")
    }

    @Test func acceptsBothIdentifiersTogether() throws {
        let record = try Fixtures.record(national: "810002673899", technical: "b6e39355-8a61-4556-b340-36f7b95fec6a")
        #expect(record.identifiers.count == 2)
    }

    // MARK: Not FHIR (400)

    @Test func refusesInvalidJSON() throws {
        #expect(throws: FHIRError.self) { try validator.validate(body: Array("{\"resourceType\":".utf8)) }
        do { _ = try validator.validate(body: Array("[]".utf8)) } catch { #expect(error.category == .invalidContent) }
    }

    @Test func refusesOtherResourceTypes() {
        var body = Fixtures.practitioner()
        body["resourceType"] = .string("Patient")
        expectRefusal(body, .invalidContent, at: "resourceType")
        body["resourceType"] = nil
        expectRefusal(body, .invalidContent, at: "resourceType")
    }

    @Test func refusesNullEmptyStringsAndEmptyArrays() {
        var body = Fixtures.practitioner()
        body["gender"] = .null
        expectRefusal(body, .invalidContent, at: "Practitioner.gender")
        body = Fixtures.practitioner(family: "")
        expectRefusal(body, .invalidContent, at: "Practitioner.name[0].family")
        body = Fixtures.practitioner(email: "")
        expectRefusal(body, .invalidContent, at: "Practitioner.telecom[0].value")
        body = Fixtures.practitioner()
        body["identifier"] = .array([])
        expectRefusal(body, .invalidContent, at: "Practitioner.identifier")
    }

    /// FHIR R4 strings hold no C0 control but tab, CR and LF (400 where they occur), and a
    /// name is one line without any control (422): a name ends up in the admin's terminal
    /// table, where an escape sequence would act.
    @Test func refusesControlCharacters() {
        expectRefusal(Fixtures.practitioner(family: "Dupont\u{1B}]52;c;AAAA\u{07}"), .invalidContent, at: "Practitioner.name[0].family")
        var body = Fixtures.practitioner()
        body["gender"] = .string("unknown\u{0}")
        expectRefusal(body, .invalidContent, at: "Practitioner.gender")
        expectRefusal(Fixtures.practitioner(family: "Dupont\nFAKE-ID 810002673899"), .unprocessable, at: "Practitioner.name[0].family")
        expectRefusal(Fixtures.practitioner(given: "Je\u{85}an"), .unprocessable, at: "Practitioner.name[0].given[0]")
        expectRefusal(Fixtures.practitioner(given: "Jean\tMarie"), .unprocessable, at: "Practitioner.name[0].given[0]")
        // Bidirectional controls reorder what a terminal shows around them.
        expectRefusal(Fixtures.practitioner(family: "DUPONT\u{202E}DNEPSUS"), .unprocessable, at: "Practitioner.name[0].family")
        expectRefusal(Fixtures.practitioner(given: "Jean\u{2066}x\u{2069}"), .unprocessable, at: "Practitioner.name[0].given[0]")
        #expect(throws: Never.self) { try PractitionerValidator().validate(.object(Fixtures.practitioner(family: "Saint-Exupéry d’Agay", given: "Zoé"))) }
    }

    /// Names are bounded (255 characters, as Keycloak's): a longer one would be stored, shown
    /// on every page, and its changes hidden past the audit row's bound.
    @Test func refusesNamesLongerThanTheLimit() {
        let long = String(repeating: "A", count: PractitionerValidator.nameLimit + 1)
        expectRefusal(Fixtures.practitioner(family: long), .unprocessable, at: "Practitioner.name[0].family")
        expectRefusal(Fixtures.practitioner(given: long), .unprocessable, at: "Practitioner.name[0].given[0]")
        let longest = String(repeating: "É", count: PractitionerValidator.nameLimit)
        #expect(throws: Never.self) { try PractitionerValidator().validate(.object(Fixtures.practitioner(family: longest, given: longest))) }
    }

    @Test func refusesWrongTypes() {
        var body = Fixtures.practitioner()
        body["active"] = .string("true")
        expectRefusal(body, .invalidContent, at: "Practitioner.active")
        body = Fixtures.practitioner()
        body["name"] = .object(["family": .string("X")])
        expectRefusal(body, .invalidContent, at: "Practitioner.name")
        body = Fixtures.practitioner()
        body["identifier"] = .array([.object(["system": .string(Fixtures.nationalSystem), "value": .number("810002673899"),
                                              "type": .object(["coding": .array([.object(["system": .string(FHIRSystems.identifierType), "code": .string("IDNPS")])])])])])
        expectRefusal(body, .invalidContent, at: "Practitioner.identifier[0].value")
    }

    @Test func refusesInvalidResourceID() {
        var body = Fixtures.practitioner()
        body["id"] = .string("bad id!")
        expectRefusal(body, .invalidContent, at: "Practitioner.id")
    }

    // MARK: Profile (422)

    @Test func requiresMetaSourceOfTheSAS() {
        var body = Fixtures.practitioner()
        body["meta"] = nil
        expectRefusal(body, .unprocessable, at: "Practitioner.meta.source")
        body["meta"] = .object(["source": .string("urn:oid:1.2.3")])
        expectRefusal(body, .unprocessable, at: "Practitioner.meta.source")
    }

    @Test func requiresIdentifier() {
        var body = Fixtures.practitioner()
        body["identifier"] = nil
        expectRefusal(body, .unprocessable, at: "Practitioner.identifier")
        body["identifier"] = .array([.object(["system": .string("http://example.org/other"), "value": .string("1")])])
        expectRefusal(body, .unprocessable, at: "Practitioner.identifier")
    }

    @Test func refusesTypeCodeContradictingSystem() {
        var body = Fixtures.practitioner()
        body["identifier"] = .array([Fixtures.identifier(system: Fixtures.sasSystem, code: "IDNPS", value: "b6e39355-8a61-4556-b340-36f7b95fec6a")])
        expectRefusal(body, .unprocessable, at: "Practitioner.identifier[0].type.coding[0].code")
        body["identifier"] = .array([Fixtures.identifier(system: Fixtures.nationalSystem, code: "INTRN", value: "810002673899")])
        expectRefusal(body, .unprocessable, at: "Practitioner.identifier[0].type.coding[0].code")
    }

    @Test func requiresIdentifierType() {
        var body = Fixtures.practitioner()
        body["identifier"] = .array([.object(["system": .string(Fixtures.nationalSystem), "value": .string("810002673899")])])
        expectRefusal(body, .unprocessable, at: "Practitioner.identifier[0].type")
    }

    @Test func checksIdentifierFormats() {
        expectRefusal(Fixtures.practitioner(national: "12345"), .unprocessable, at: "Practitioner.identifier[0].value")
        expectRefusal(Fixtures.practitioner(national: nil, technical: "not-a-uuid"), .unprocessable, at: "Practitioner.identifier[0].value")
        // A UUID in the national system is not a national id.
        expectRefusal(Fixtures.practitioner(national: "b6e39355-8a61-4556-b340-36f7b95fec6a"), .unprocessable, at: "Practitioner.identifier[0].value")
    }

    @Test func refusesTwoIdentifiersOfTheSameSystem() {
        var body = Fixtures.practitioner()
        body["identifier"] = .array([
            Fixtures.identifier(system: Fixtures.nationalSystem, code: "IDNPS", value: "810002673899"),
            Fixtures.identifier(system: Fixtures.nationalSystem, code: "IDNPS", value: "810002673900"),
        ])
        expectRefusal(body, .unprocessable, at: "Practitioner.identifier[1].system")
    }

    @Test func requiresActive() {
        var body = Fixtures.practitioner()
        body["active"] = nil
        expectRefusal(body, .unprocessable, at: "Practitioner.active")
    }

    @Test func requiresNames() {
        var body = Fixtures.practitioner()
        body["name"] = nil
        expectRefusal(body, .unprocessable, at: "Practitioner.name")
        expectRefusal(Fixtures.practitioner(family: "   "), .unprocessable, at: "Practitioner.name[0].family")
        expectRefusal(Fixtures.practitioner(given: " "), .unprocessable, at: "Practitioner.name[0].given[0]")
        body = Fixtures.practitioner()
        body["name"] = .array([.object(["given": .array([.string("Jules")])])])
        expectRefusal(body, .unprocessable, at: "Practitioner.name[0].family")
        body["name"] = .array([.object(["family": .string("MARIUS")])])
        expectRefusal(body, .unprocessable, at: "Practitioner.name[0].given")
        body["name"] = .array([.object(["family": .string("MARIUS"), "given": .array([.string("Jules"), .string("Henri")])])])
        expectRefusal(body, .unprocessable, at: "Practitioner.name[0].given")
    }

    /// One name: a second one would be dropped without a word, so it is refused (as a second
    /// telecom is).
    @Test func refusesASecondName() {
        var body = Fixtures.practitioner()
        body["name"] = .array([.object(["family": .string("MARIUS"), "given": .array([.string("Jules")])]),
                               .object(["family": .string("DURAND"), "given": .array([.string("Paul")])])])
        expectRefusal(body, .unprocessable, at: "Practitioner.name")
    }

    /// What changes the meaning of what is read cannot be ignored as unknown elements are
    /// (FHIR R4, extensibility): a modifier extension anywhere, `implicitRules`, and a managed
    /// identifier marked `use: old` are refused (422, nothing provisioned), each at its place.
    @Test func refusesModifiersItDoesNotUnderstand() {
        let modifier: JSONValue = .array([.object(["url": .string("http://example.org/negated"), "valueBoolean": .bool(true)])])
        var body = Fixtures.practitioner()
        body["modifierExtension"] = modifier
        expectRefusal(body, .unprocessable, at: "Practitioner.modifierExtension")
        #expect(refusal(body)?.issues.first?.code == .notSupported)
        for (element, path) in [("identifier", "Practitioner.identifier[0].modifierExtension"), ("name", "Practitioner.name[0].modifierExtension"),
                                ("telecom", "Practitioner.telecom[0].modifierExtension")] {
            body = Fixtures.practitioner()
            guard case .array(var entries)? = body[element], case .object(var first) = entries[0] else { Issue.record("no \(element)"); continue }
            first["modifierExtension"] = modifier
            entries[0] = .object(first)
            body[element] = .array(entries)
            expectRefusal(body, .unprocessable, at: path)
        }
        body = Fixtures.practitioner()
        body["implicitRules"] = .string("http://example.org/rules")
        expectRefusal(body, .unprocessable, at: "Practitioner.implicitRules")
        body = Fixtures.practitioner()
        guard case .array(var identifiers)? = body["identifier"], case .object(var identifier) = identifiers[0] else { Issue.record("no identifier"); return }
        identifier["use"] = .string("old")
        identifiers[0] = .object(identifier)
        body["identifier"] = .array(identifiers)
        expectRefusal(body, .unprocessable, at: "Practitioner.identifier[0].use")
        for (element, path) in [("name", "Practitioner.name[0].use"), ("telecom", "Practitioner.telecom[0].use")] {
            var old = Fixtures.practitioner()
            guard case .array(var entries)? = old[element], case .object(var first) = entries[0] else { Issue.record("no \(element)"); continue }
            first["use"] = .string("old")
            entries[0] = .object(first)
            old[element] = .array(entries)
            expectRefusal(old, .unprocessable, at: path)
        }
        // Other uses say nothing against the identifier.
        identifier["use"] = .string("official")
        identifiers[0] = .object(identifier)
        body["identifier"] = .array(identifiers)
        #expect(throws: Never.self) { try validator.validate(.object(body)) }
    }

    /// A body that is not JSON names the element where the parser stopped when there is one:
    /// a duplicate member, or a syntax error inside a member's value.
    @Test func jsonErrorsNameTheirElement() {
        for (text, expression) in [(#"{"resourceType":"Practitioner","active":true,"active":false}"#, "Practitioner.active"),
                                   (#"{"resourceType":"Practitioner","name":[{"family":"A"},{"family":tru}]}"#, "Practitioner.name[1].family"),
                                   (#"{"resourceType":"Practitioner","identifier":[{"value":"1","value":"2"}]}"#, "Practitioner.identifier[0].value")] {
            do {
                _ = try validator.validate(body: Array(text.utf8))
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.category == .invalidContent)
                #expect(error.issues.first?.expression == [expression], "\(error)")
            }
        }
        do { _ = try validator.validate(body: Array("{".utf8)) } catch { #expect(error.issues.first?.expression == [], "\(error)") }
    }

    @Test func trimsNames() throws {
        let record = try Fixtures.record(family: " MARIUS ", given: "Jules ")
        #expect(record.familyName == "MARIUS")
        #expect(record.givenName == "Jules")
    }

    @Test func requiresAnEmailTelecom() {
        var body = Fixtures.practitioner()
        body["telecom"] = nil
        expectRefusal(body, .unprocessable, at: "Practitioner.telecom")
        body["telecom"] = .array([.object(["system": .string("phone"), "value": .string("+33123456789")])])
        expectRefusal(body, .unprocessable, at: "Practitioner.telecom[0].system")
        expectRefusal(Fixtures.practitioner(email: "not-an-email"), .unprocessable, at: "Practitioner.telecom[0].value")
        body["telecom"] = .array([.object(["system": .string("email")])])
        expectRefusal(body, .unprocessable, at: "Practitioner.telecom[0].value")
        body["telecom"] = .array([
            .object(["system": .string("email"), "value": .string("a@x.fr")]),
            .object(["system": .string("email"), "value": .string("b@x.fr")]),
        ])
        expectRefusal(body, .unprocessable, at: "Practitioner.telecom")
    }

    @Test func reportsEveryProblemAtOnce() {
        var body = Fixtures.practitioner(email: "nope")
        body["active"] = nil
        body["meta"] = nil
        guard let error = refusal(body) else { return }
        let paths = Set(error.issues.flatMap(\.expression))
        #expect(paths.isSuperset(of: ["Practitioner.active", "Practitioner.meta.source", "Practitioner.telecom[0].value"]))
    }
}
