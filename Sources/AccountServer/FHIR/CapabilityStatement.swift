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
            interaction("create", "Refused with 409 when an active account already holds one of the identifiers. Conditional create with If-None-Exist: identifier=system|value (200 with the holder, nothing created)."),
            interaction("update", "Conditional update only (PUT [base]/Practitioner?identifier=system|value); If-Match (version ETags or *) is honoured."),
            interaction("read", nil),
            interaction("search-type", "By identifier."),
        ])
        practitioner["versioning"] = .string("versioned-update")
        practitioner["readHistory"] = .bool(false)
        practitioner["updateCreate"] = .bool(true)
        practitioner["conditionalCreate"] = .bool(true)
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

    /// One statement for the whole endpoint when this product stands in front of the vendor's
    /// INT_R01 slot search: the upstream's resources (Slot, Schedule, its Practitioner
    /// search…), system interactions and operations, with this product's Practitioner writes
    /// merged into the upstream's Practitioner entry — routing sends Practitioner searches to
    /// the upstream, so its search parameters are the ones stated. The security description
    /// and formats are this product's: it is what the SAS connects to.
    static func merged(local: JSONValue, upstream: JSONValue) -> JSONValue {
        guard case .object(var statement) = local, case .array(var rests) = statement["rest"], case .object(var rest)? = rests.first,
              case .array(let localResources) = rest["resource"],
              case .object(let upstreamStatement) = upstream else { return local }
        let upstreamRest: JSONObject? = {
            guard case .array(let entries) = upstreamStatement["rest"] else { return nil }
            for case .object(let entry) in entries where entry["mode"] == .string("server") { return entry }
            return nil
        }()
        var resources: [JSONValue] = []
        var practitionerMerged = false
        if let upstreamRest, case .array(let upstreamResources) = upstreamRest["resource"] {
            for case .object(let entry) in upstreamResources {
                if entry["type"] == .string("Practitioner"), case .object(let ours)? = localResources.first {
                    resources.append(.object(mergedPractitioner(local: ours, upstream: entry)))
                    practitionerMerged = true
                } else {
                    resources.append(.object(entry))
                }
            }
        }
        if !practitionerMerged, case .object(var ours)? = localResources.first {
            // The upstream has no Practitioner search: searches relayed to it would fail, so
            // none is claimed.
            ours["searchParam"] = nil
            if case .array(let interactions)? = ours["interaction"] {
                ours["interaction"] = .array(interactions.filter { Self.code(of: $0) != "search-type" })
            }
            resources.insert(.object(ours), at: 0)
        }
        rest["resource"] = .array(resources)
        for key in ["interaction", "searchParam", "operation", "compartment"] {
            rest[key] = upstreamRest?[key]
        }
        rests[0] = .object(rest)
        statement["rest"] = .array(rests)
        for key in ["instantiates", "implementationGuide"] {
            var values: [JSONValue] = []
            for source in [statement[key], upstreamStatement[key]] {
                if case .array(let items)? = source { values += items.filter { !values.contains($0) } }
            }
            statement[key] = values.isEmpty ? nil : .array(values)
        }
        if case .object(var implementation)? = statement["implementation"] {
            var name = "the vendor's slot search"
            if case .object(let software)? = upstreamStatement["software"], case .string(let softwareName)? = software["name"] { name = softwareName }
            implementation["description"] = .string("SAS INT_R02 regulator account receiver, in front of \(name) (INT_R01)")
            statement["implementation"] = .object(implementation)
        }
        return .object(statement)
    }

    private static func mergedPractitioner(local: JSONObject, upstream: JSONObject) -> JSONObject {
        var merged = local
        var interactions: [JSONValue] = []
        if case .array(let ours)? = local["interaction"] {
            interactions = ours.filter { ["create", "update"].contains(code(of: $0)) }
        }
        interactions.append(interaction("read", "Accounts created through INT_R02 are read here; any other id is read from the slot search."))
        if case .array(let theirs)? = upstream["interaction"] {
            interactions += theirs.filter { !["create", "update", "read", "delete", "patch"].contains(code(of: $0)) }
        }
        merged["interaction"] = .array(interactions)
        var profiles: [JSONValue] = []
        for source in [local["supportedProfile"], upstream["supportedProfile"]] {
            if case .array(let items)? = source { profiles += items.filter { !profiles.contains($0) } }
        }
        merged["supportedProfile"] = profiles.isEmpty ? nil : .array(profiles)
        for key in ["searchParam", "searchInclude", "searchRevInclude", "operation"] {
            merged[key] = upstream[key]
        }
        if case .string(let documentation)? = local["documentation"] {
            merged["documentation"] = .string(documentation + " Practitioner searches are answered by the slot search (INT_R01).")
        }
        return merged
    }

    private static func code(of interaction: JSONValue) -> String? {
        guard case .object(let object) = interaction, case .string(let code)? = object["code"] else { return nil }
        return code
    }

    private static func interaction(_ code: String, _ documentation: String?) -> JSONValue {
        var object: JSONObject = ["code": .string(code)]
        if let documentation { object["documentation"] = .string(documentation) }
        return .object(object)
    }
}
