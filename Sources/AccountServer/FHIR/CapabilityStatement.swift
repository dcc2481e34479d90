import Accounts
import Foundation

/// The server's CapabilityStatement (FHIR 4.0.1): exactly the interactions implemented,
/// nothing more, so the SAS's kit and any FHIR client can rely on it.
enum CapabilityStatement {
    static let softwareVersion = "0.1.0"

    static func resource(baseURL: String, date: Date) -> JSONValue {
        let identifierParam: JSONObject = [
            "name": .string("identifier"),
            "definition": .string("http://hl7.org/fhir/SearchParameter/Practitioner-identifier"),
            "type": .string("token"),
            "documentation": .string("system|value with the national id system (\(FHIRSystems.nationalID)) or the SAS technical id system (\(FHIRSystems.sasPlatform)); a bare value matches either. Deactivated accounts keep their identifiers until another account takes them."),
        ]
        var practitioner: JSONObject = ["type": .string("Practitioner")]
        practitioner["profile"] = .string("http://hl7.org/fhir/StructureDefinition/Practitioner")
        practitioner["supportedProfile"] = .array([.string(FHIRSystems.practitionerRegulProfile)])
        practitioner["documentation"] = .string("Regulator accounts (INT_R02). Create with POST; update with a conditional PUT ?identifier=system|value, which creates when nothing matches; active=false withdraws the regulator habilitation. There is no delete.")
        practitioner["interaction"] = .array([
            interaction("create", "Refused with 409 when an active account already holds one of the identifiers."),
            interaction("update", "Conditional update only (PUT [base]/Practitioner?identifier=system|value); If-Match is honoured."),
            interaction("read", nil),
            interaction("search-type", "By identifier."),
        ])
        practitioner["versioning"] = .string("versioned-update")
        practitioner["readHistory"] = .bool(false)
        practitioner["updateCreate"] = .bool(true)
        practitioner["conditionalCreate"] = .bool(false)
        practitioner["conditionalRead"] = .string("not-supported")
        practitioner["conditionalUpdate"] = .bool(true)
        practitioner["conditionalDelete"] = .string("not-supported")
        practitioner["searchParam"] = .array([.object(identifierParam)])

        var security: JSONObject = ["cors": .bool(false)]
        security["description"] = .string("Mutual TLS (TLS 1.2 or 1.3): a client certificate from a configured CA, with an allowed CN and OU, not revoked, is required on every connection.")

        var rest: JSONObject = ["mode": .string("server")]
        rest["security"] = .object(security)
        rest["resource"] = .array([.object(practitioner)])

        var statement: JSONObject = ["resourceType": .string("CapabilityStatement")]
        statement["status"] = .string("active")
        statement["date"] = .string(AuditLog.timestamp(date))
        statement["publisher"] = .string("account-server")
        statement["kind"] = .string("instance")
        statement["software"] = .object(["name": .string("account-server"), "version": .string(softwareVersion)])
        statement["implementation"] = .object(["description": .string("SAS INT_R02 regulator account receiver"), "url": .string(baseURL)])
        statement["fhirVersion"] = .string("4.0.1")
        statement["format"] = .array([.string("json"), .string("application/fhir+json")])
        statement["rest"] = .array([.object(rest)])
        return .object(statement)
    }

    private static func interaction(_ code: String, _ documentation: String?) -> JSONValue {
        var object: JSONObject = ["code": .string(code)]
        if let documentation { object["documentation"] = .string(documentation) }
        return .object(object)
    }
}
