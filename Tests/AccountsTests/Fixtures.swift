import Accounts
import Foundation

/// Bodies built from the published examples, so every test starts from a known-valid
/// FrPractitionerRegul and changes one thing.
enum Fixtures {
    static let examplesDirectory: URL = {
        // Tests/AccountsTests/Fixtures.swift → Tests/Examples (the published examples, copied
        // into the repository so a lone clone runs the suite).
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Examples")
    }()

    static func example(_ name: String) throws -> JSONValue {
        let data = try Data(contentsOf: examplesDirectory.appendingPathComponent(name))
        return try JSONParser().parse(Array(data))
    }

    static let nationalSystem = FHIRSystems.nationalID
    static let sasSystem = FHIRSystems.sasPlatform

    static func identifier(system: String, code: String, value: String) -> JSONValue {
        .object([
            "type": .object(["coding": .array([.object(["system": .string(FHIRSystems.identifierType), "code": .string(code)])])]),
            "system": .string(system),
            "value": .string(value),
        ])
    }

    /// A valid body; pass identifiers to override the national id default.
    static func practitioner(national: String? = "810002673899", technical: String? = nil, active: Bool = true,
                             family: String = "MARIUS", given: String = "Jules", email: String = "jules.marius@test.com") -> JSONObject {
        var identifiers: [JSONValue] = []
        if let national { identifiers.append(identifier(system: nationalSystem, code: "IDNPS", value: national)) }
        if let technical { identifiers.append(identifier(system: sasSystem, code: "INTRN", value: technical)) }
        return [
            "resourceType": .string("Practitioner"),
            "id": .string("example-regulator-1"),
            "meta": .object(["source": .string(FHIRSystems.sasPlatform), "profile": .array([.string(FHIRSystems.practitionerRegulProfile)])]),
            "identifier": .array(identifiers),
            "active": .bool(active),
            "name": .array([.object(["family": .string(family), "given": .array([.string(given)])])]),
            "telecom": .array([.object(["system": .string("email"), "value": .string(email)])]),
        ]
    }

    static func record(national: String? = "810002673899", technical: String? = nil, active: Bool = true,
                       family: String = "MARIUS", given: String = "Jules", email: String = "jules.marius@test.com") throws -> RegulatorRecord {
        try PractitionerValidator().validate(.object(practitioner(national: national, technical: technical, active: active, family: family, given: given, email: email)))
    }
}
