import Foundation

/// Renders an account as the FrPractitionerRegul resource the server stores and returns:
/// current identifiers (national id first), `active`, name, e-mail, and `meta` with our
/// version and timestamp. Nothing about credentials is ever part of it.
public enum PractitionerRenderer {
    public static func resource(_ account: AccountSnapshot) -> JSONValue {
        var meta: JSONObject = [
            "versionId": .string(String(account.version)),
            "lastUpdated": .string(AuditLog.timestamp(account.updatedAt)),
        ]
        meta["source"] = .string(FHIRSystems.sasPlatform)
        meta["profile"] = .array([.string(FHIRSystems.practitionerRegulProfile)])

        var resource: JSONObject = ["resourceType": .string("Practitioner")]
        resource["id"] = .string(account.id)
        resource["meta"] = .object(meta)
        // `identifier` is 1..* in the profile: an account whose identifiers all went to
        // other accounts shows those it held last, marked as no longer valid.
        resource["identifier"] = .array(account.identifiers.isEmpty
            ? account.lastHeldIdentifiers.map(formerIdentifier) : account.identifiers.map(identifier))
        resource["active"] = .bool(account.active)
        resource["name"] = .array([.object(["family": .string(account.familyName), "given": .array([.string(account.givenName)])])])
        resource["telecom"] = .array([.object(["system": .string("email"), "value": .string(account.email)])])
        return .object(resource)
    }

    static func identifier(_ identifier: RegulatorIdentifier) -> JSONValue {
        let coding: JSONObject = ["system": .string(FHIRSystems.identifierType), "code": .string(identifier.kind.typeCode)]
        var object: JSONObject = ["type": .object(["coding": .array([.object(coding)])])]
        object["system"] = .string(identifier.system)
        object["value"] = .string(identifier.value)
        return .object(object)
    }

    static func formerIdentifier(_ held: AccountSnapshot.HeldIdentifier) -> JSONValue {
        guard case .object(var object) = identifier(held.identifier) else { return identifier(held.identifier) }
        object["use"] = .string("old")
        object["period"] = .object(["start": .string(AuditLog.timestamp(held.assignedAt)), "end": .string(AuditLog.timestamp(held.endedAt))])
        return .object(object)
    }
}
