/// The content of a valid FrPractitionerRegul body: what the provisioning rules work on.
/// Everything here has been checked; nothing else of the body is kept.
public struct RegulatorRecord: Sendable, Equatable {
    public var nationalID: NationalID?
    public var sasTechnicalID: SASTechnicalID?
    public var active: Bool
    public var familyName: String
    public var givenName: String
    public var email: EmailAddress
    /// Identifier systems the body carried that this product does not manage (tolerated, as
    /// the profile's slicing is open, and reported in the audit trail).
    public var ignoredIdentifierSystems: [String]

    public init(
        nationalID: NationalID? = nil, sasTechnicalID: SASTechnicalID? = nil, active: Bool,
        familyName: String, givenName: String, email: EmailAddress, ignoredIdentifierSystems: [String] = []
    ) {
        self.nationalID = nationalID
        self.sasTechnicalID = sasTechnicalID
        self.active = active
        self.familyName = familyName
        self.givenName = givenName
        self.email = email
        self.ignoredIdentifierSystems = ignoredIdentifierSystems
    }

    /// The identifiers the body names, national id first.
    public var identifiers: [RegulatorIdentifier] {
        var result: [RegulatorIdentifier] = []
        if let nationalID { result.append(.national(nationalID)) }
        if let sasTechnicalID { result.append(.sasTechnical(sasTechnicalID)) }
        return result
    }

    public func identifier(of kind: RegulatorIdentifier.Kind) -> RegulatorIdentifier? {
        identifiers.first { $0.kind == kind }
    }
}

/// Checks a decoded body against FHIR's JSON rules and the FrPractitionerRegul profile, and
/// collects *every* problem so the SAS can fix a body in one round trip.
///
/// Structural problems (wrong JSON types, `null`, empty strings or arrays, wrong
/// `resourceType`) make the body invalid FHIR: category ``FHIRError/Category/invalidContent``
/// (400). Profile problems (missing element, bad identifier format, contradicting type code,
/// non-email telecom...) are ``FHIRError/Category/unprocessable`` (422). Unknown elements are
/// tolerated, as HAPI FHIR does, but not what would change the meaning of what is read
/// (`modifierExtension`, `implicitRules`, an identifier, name or telecom whose `use` is
/// `old`): 422.
public struct PractitionerValidator: Sendable {
    /// Longest family or given name kept, in characters (Keycloak's limit is 255): a name is
    /// shown on pages and in the admin's table, and an audit row's `changes` are bounded, so a
    /// megabyte name would hide its own changes there.
    public static let nameLimit = 255

    public init() {}

    /// Parses and validates raw bytes.
    public func validate(body: some Collection<UInt8>) throws(FHIRError) -> RegulatorRecord {
        let json: JSONValue
        do {
            json = try JSONParser().parse(body)
        } catch {
            throw FHIRError(.invalidContent, code: .structure, "The body is not valid JSON: \(error).",
                            expression: error.path.isEmpty ? [] : ["Practitioner" + error.path])
        }
        return try validate(json)
    }

    public func validate(_ json: JSONValue) throws(FHIRError) -> RegulatorRecord {
        var collector = IssueCollector()
        guard case .object(let root) = json else {
            throw FHIRError(.invalidContent, code: .structure, "The body must be a JSON object (a FHIR resource), not \(json.typeDescription).")
        }
        guard case .string(let resourceType)? = root["resourceType"] else {
            throw FHIRError(.invalidContent, code: .structure, "The resource has no resourceType; expected \"Practitioner\".", expression: ["resourceType"])
        }
        guard resourceType == "Practitioner" else {
            throw FHIRError(.invalidContent, code: .invalid, "Expected a Practitioner resource, received \(resourceType).", expression: ["resourceType"])
        }
        checkFHIRJSONRules(.object(root), path: "Practitioner", into: &collector)
        if root["implicitRules"] != nil {
            // A modifier element (FHIR R4 Resource.implicitRules): the resource is to be read
            // under rules this server does not know, so it cannot act on it safely.
            collector.profile(.notSupported, "implicitRules is not supported: this server cannot process a resource under rules it does not know.",
                              at: "Practitioner.implicitRules")
        }

        if let id = root["id"] {
            if case .string(let text) = id {
                if !Self.isValidResourceID(text) {
                    collector.structural(.value, "id must be 1 to 64 characters among A-Z, a-z, 0-9, '-' and '.'.", at: "Practitioner.id")
                }
            } else {
                collector.wrongType(id, expected: "a string", at: "Practitioner.id")
            }
        }

        checkMeta(root["meta"], into: &collector)
        let identifiers = checkIdentifiers(root["identifier"], into: &collector)
        let active = checkActive(root["active"], into: &collector)
        let names = checkName(root["name"], into: &collector)
        let email = checkTelecom(root["telecom"], into: &collector)

        if let error = collector.error { throw error }
        guard let active, let names, let email, let identifiers else {
            // Every nil above was reported as an issue; reaching here would be a bug.
            throw FHIRError(.internalError, code: .exception, "Validation inconsistency.")
        }
        return RegulatorRecord(
            nationalID: identifiers.national, sasTechnicalID: identifiers.technical, active: active,
            familyName: names.family, givenName: names.given, email: email,
            ignoredIdentifierSystems: identifiers.ignored
        )
    }

    // MARK: FHIR JSON representation rules

    /// FHIR JSON forbids `null`, empty strings, empty arrays and empty objects anywhere
    /// (`http://hl7.org/fhir/R4/json.html`); they are reported where they occur.
    private func checkFHIRJSONRules(_ value: JSONValue, path: String, into collector: inout IssueCollector) {
        switch value {
        case .null:
            collector.structural(.structure, "null is not allowed in FHIR JSON; omit the element instead.", at: path)
        case .string(let text):
            if text.isEmpty { collector.structural(.value, "Empty strings are not allowed in FHIR JSON; omit the element instead.", at: path) }
            // FHIR R4 `string`: no character below U+0020 but tab, CR and LF.
            if text.unicodeScalars.contains(where: { $0.value < 0x20 && $0 != "\t" && $0 != "\r" && $0 != "\n" }) {
                collector.structural(.value, "FHIR strings must not contain control characters (below U+0020, other than tab, CR and LF).", at: path)
            }
        case .array(let elements):
            if elements.isEmpty { collector.structural(.structure, "Empty arrays are not allowed in FHIR JSON; omit the element instead.", at: path) }
            for (index, element) in elements.enumerated() {
                if case .array = element {
                    collector.structural(.structure, "Arrays of arrays are not allowed in FHIR JSON.", at: "\(path)[\(index)]")
                } else {
                    checkFHIRJSONRules(element, path: "\(path)[\(index)]", into: &collector)
                }
            }
        case .object(let object):
            if object.isEmpty { collector.structural(.structure, "Empty objects are not allowed in FHIR JSON; omit the element instead.", at: path) }
            if object["modifierExtension"] != nil {
                // FHIR R4 (extensibility.html#modifierExtension): a modifier extension this
                // server does not understand changes the meaning of its element, so the
                // resource must be refused rather than processed as if it were absent.
                collector.profile(.notSupported, "modifierExtension is not supported: this server understands no modifier extension and cannot process the element as it is meant.",
                                  at: "\(path).modifierExtension")
            }
            for member in object.members where member.key != "resourceType" || path != "Practitioner" {
                checkFHIRJSONRules(member.value, path: "\(path).\(member.key)", into: &collector)
            }
        case .bool, .number:
            break
        }
    }

    /// FHIR `id` syntax: 1–64 of A-Z a-z 0-9 - and `.`.
    public static func isValidResourceID(_ text: String) -> Bool {
        let bytes = text.utf8
        return (1...64).contains(bytes.count) && bytes.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".")
        }
    }

    // MARK: Elements

    private func checkMeta(_ value: JSONValue?, into collector: inout IssueCollector) {
        guard let value else {
            collector.profile(.required, "meta.source is required and must be \(FHIRSystems.sasPlatform) (the SAS platform).", at: "Practitioner.meta.source")
            return
        }
        guard case .object(let meta) = value else {
            collector.wrongType(value, expected: "an object", at: "Practitioner.meta")
            return
        }
        switch meta["source"] {
        case nil:
            collector.profile(.required, "meta.source is required and must be \(FHIRSystems.sasPlatform) (the SAS platform).", at: "Practitioner.meta.source")
        case .string(let source)?:
            if !source.isEmpty && source != FHIRSystems.sasPlatform {
                collector.profile(.value, "meta.source must be \(FHIRSystems.sasPlatform) (the SAS platform), not \(source).", at: "Practitioner.meta.source")
            }
        case let other?:
            collector.wrongType(other, expected: "a string", at: "Practitioner.meta.source")
        }
        if let profile = meta["profile"] {
            if case .array(let entries) = profile {
                for (index, entry) in entries.enumerated() {
                    if case .string = entry { continue }
                    collector.wrongType(entry, expected: "a string", at: "Practitioner.meta.profile[\(index)]")
                }
            } else {
                collector.wrongType(profile, expected: "an array", at: "Practitioner.meta.profile")
            }
        }
    }

    private struct IdentifierResult {
        var national: NationalID?
        var technical: SASTechnicalID?
        var ignored: [String]
    }

    private func checkIdentifiers(_ value: JSONValue?, into collector: inout IssueCollector) -> IdentifierResult? {
        guard let value else {
            collector.profile(.required, "At least one identifier is required: the national id (\(FHIRSystems.nationalID)) or the SAS technical id (\(FHIRSystems.sasPlatform)).", at: "Practitioner.identifier")
            return nil
        }
        guard case .array(let entries) = value else {
            collector.wrongType(value, expected: "an array", at: "Practitioner.identifier")
            return nil
        }
        var result = IdentifierResult(ignored: [])
        var seenKinds: [RegulatorIdentifier.Kind: Int] = [:]
        var failed = false
        for (index, entry) in entries.enumerated() {
            let path = "Practitioner.identifier[\(index)]"
            guard case .object(let identifier) = entry else {
                if entry != .null { collector.wrongType(entry, expected: "an object", at: path) }
                failed = true
                continue
            }
            guard let systemValue = identifier["system"] else {
                collector.profile(.required, "identifier.system is required.", at: "\(path).system")
                failed = true
                continue
            }
            guard case .string(let system) = systemValue else {
                collector.wrongType(systemValue, expected: "a string", at: "\(path).system")
                failed = true
                continue
            }
            guard let kind = RegulatorIdentifier.Kind(system: system) else {
                if !system.isEmpty { result.ignored.append(system) }
                continue
            }
            if let previous = seenKinds[kind] {
                collector.profile(.duplicate, "Only one identifier of system \(system) is allowed; identifier[\(previous)] has the same system.", at: "\(path).system")
                failed = true
            }
            seenKinds[kind] = index
            if !checkIdentifierType(identifier["type"], kind: kind, path: path, into: &collector) { failed = true }
            if identifier["use"] == .string("old") {
                // Identifier.use is a modifier: "old" says the identifier no longer identifies
                // anyone, so it cannot be the one an account is created or matched by.
                collector.profile(.value, "An identifier with use \"old\" is no longer valid: send the regulator's current \(kind.typeCode) identifier.", at: "\(path).use")
                failed = true
            }
            switch identifier["value"] {
            case nil:
                collector.profile(.required, "identifier.value is required.", at: "\(path).value")
                failed = true
            case .string(let text)?:
                guard !text.isEmpty else { failed = true; break }
                switch RegulatorIdentifier(kind: kind, value: text) {
                case .national(let id)?: result.national = id
                case .sasTechnical(let id)?: result.technical = id
                case nil:
                    collector.profile(.value, "\"\(text)\" is not a valid \(kind.typeCode) value: expected \(RegulatorIdentifier.formatHint(for: kind)).", at: "\(path).value")
                    failed = true
                }
            case let other?:
                collector.wrongType(other, expected: "a string", at: "\(path).value")
                failed = true
            }
        }
        if !failed && result.national == nil && result.technical == nil {
            collector.profile(.required, "No identifier with a supported system: expected the national id (\(FHIRSystems.nationalID)) or the SAS technical id (\(FHIRSystems.sasPlatform)).", at: "Practitioner.identifier")
        }
        return failed ? nil : result
    }

    /// The slice's `type.coding` is fixed to fr-v2-0203#IDNPS or #INTRN: required, and a code
    /// that contradicts the system is refused.
    private func checkIdentifierType(_ value: JSONValue?, kind: RegulatorIdentifier.Kind, path: String, into collector: inout IssueCollector) -> Bool {
        let expected = "\(FHIRSystems.identifierType)#\(kind.typeCode)"
        guard let value else {
            collector.profile(.required, "identifier.type is required for system \(kind.system): expected coding \(expected).", at: "\(path).type")
            return false
        }
        guard case .object(let type) = value else {
            collector.wrongType(value, expected: "an object", at: "\(path).type")
            return false
        }
        guard let codingValue = type["coding"] else {
            collector.profile(.required, "identifier.type.coding is required: expected \(expected).", at: "\(path).type.coding")
            return false
        }
        guard case .array(let codings) = codingValue else {
            collector.wrongType(codingValue, expected: "an array", at: "\(path).type.coding")
            return false
        }
        var found = false
        var ok = true
        for (index, codingEntry) in codings.enumerated() {
            let codingPath = "\(path).type.coding[\(index)]"
            guard case .object(let coding) = codingEntry else {
                if codingEntry != .null { collector.wrongType(codingEntry, expected: "an object", at: codingPath) }
                ok = false
                continue
            }
            for key in ["system", "code"] {
                if let member = coding[key], case .string = member {} else if let member = coding[key] {
                    collector.wrongType(member, expected: "a string", at: "\(codingPath).\(key)")
                    ok = false
                }
            }
            guard case .string(FHIRSystems.identifierType)? = coding["system"] else { continue }
            found = true
            switch coding["code"] {
            case .string(kind.typeCode)?:
                break
            case .string(let code)?:
                if !code.isEmpty {
                    collector.profile(.codeInvalid, "identifier.type code \(code) contradicts system \(kind.system), which requires \(kind.typeCode).", at: "\(codingPath).code")
                }
                ok = false
            case nil:
                collector.profile(.required, "identifier.type.coding.code is required: expected \(kind.typeCode).", at: "\(codingPath).code")
                ok = false
            default:
                ok = false
            }
        }
        if !found && ok {
            collector.profile(.required, "identifier.type.coding must contain \(expected).", at: "\(path).type.coding")
            return false
        }
        return ok
    }

    private func checkActive(_ value: JSONValue?, into collector: inout IssueCollector) -> Bool? {
        switch value {
        case nil:
            collector.profile(.required, "active is required: true grants the regulator habilitation, false withdraws it.", at: "Practitioner.active")
            return nil
        case .bool(let flag)?:
            return flag
        case let other?:
            collector.wrongType(other, expected: "a boolean (true or false, without quotes)", at: "Practitioner.active")
            return nil
        }
    }

    private func checkName(_ value: JSONValue?, into collector: inout IssueCollector) -> (family: String, given: String)? {
        guard let value else {
            collector.profile(.required, "name is required, with a family name and a given name.", at: "Practitioner.name")
            return nil
        }
        guard case .array(let names) = value else {
            collector.wrongType(value, expected: "an array", at: "Practitioner.name")
            return nil
        }
        if names.count > 1 {
            // One name is what an account holds: a second one would be dropped, so it is
            // refused, as a second telecom entry is.
            collector.profile(.structure, "name must hold exactly one entry (family and given name); \(names.count) were sent.", at: "Practitioner.name")
        }
        guard let first = names.first else { return nil }
        guard case .object(let name) = first else {
            if first != .null { collector.wrongType(first, expected: "an object", at: "Practitioner.name[0]") }
            return nil
        }
        if name["use"] == .string("old") {
            // HumanName.use is a modifier: "old" says the name is no longer in use.
            collector.profile(.value, "A name with use \"old\" is no longer in use: send the regulator's current name.", at: "Practitioner.name[0].use")
        }
        var family: String?
        switch name["family"] {
        case nil:
            collector.profile(.required, "name.family is required.", at: "Practitioner.name[0].family")
        case .string(let text)?:
            let trimmed = text.trimmingFHIRWhitespace()
            if trimmed.isEmpty {
                if !text.isEmpty { collector.profile(.value, "name.family must not be blank.", at: "Practitioner.name[0].family") }
            } else if trimmed.hasControlCharacter {
                collector.profile(.value, "name.family must be one line without control characters (tab, CR, LF, DEL, C1).", at: "Practitioner.name[0].family")
            } else if trimmed.count > Self.nameLimit {
                collector.profile(.value, "name.family is longer than \(Self.nameLimit) characters.", at: "Practitioner.name[0].family")
            } else {
                family = trimmed
            }
        case let other?:
            collector.wrongType(other, expected: "a string", at: "Practitioner.name[0].family")
        }
        var given: String?
        switch name["given"] {
        case nil:
            collector.profile(.required, "name.given is required (one given name).", at: "Practitioner.name[0].given")
        case .array(let entries)?:
            if entries.count > 1 {
                collector.profile(.structure, "name.given allows exactly one given name in FrPractitionerRegul; \(entries.count) were sent.", at: "Practitioner.name[0].given")
            }
            switch entries.first {
            case .string(let text)?:
                let trimmed = text.trimmingFHIRWhitespace()
                if trimmed.isEmpty {
                    if !text.isEmpty { collector.profile(.value, "name.given must not be blank.", at: "Practitioner.name[0].given[0]") }
                } else if trimmed.hasControlCharacter {
                    collector.profile(.value, "name.given must be one line without control characters (tab, CR, LF, DEL, C1).", at: "Practitioner.name[0].given[0]")
                } else if trimmed.count > Self.nameLimit {
                    collector.profile(.value, "name.given is longer than \(Self.nameLimit) characters.", at: "Practitioner.name[0].given[0]")
                } else if entries.count == 1 {
                    given = trimmed
                }
            case let other?:
                if other != .null { collector.wrongType(other, expected: "a string", at: "Practitioner.name[0].given[0]") }
            case nil:
                break
            }
        case let other?:
            collector.wrongType(other, expected: "an array of strings", at: "Practitioner.name[0].given")
        }
        guard let family, let given else { return nil }
        return (family, given)
    }

    private func checkTelecom(_ value: JSONValue?, into collector: inout IssueCollector) -> EmailAddress? {
        guard let value else {
            collector.profile(.required, "telecom is required: one entry with system \"email\" and the regulator's e-mail address.", at: "Practitioner.telecom")
            return nil
        }
        guard case .array(let entries) = value else {
            collector.wrongType(value, expected: "an array", at: "Practitioner.telecom")
            return nil
        }
        if entries.count > 1 {
            collector.profile(.structure, "telecom must hold exactly one entry (the e-mail address); \(entries.count) were sent.", at: "Practitioner.telecom")
        }
        guard let first = entries.first else { return nil }
        guard case .object(let telecom) = first else {
            if first != .null { collector.wrongType(first, expected: "an object", at: "Practitioner.telecom[0]") }
            return nil
        }
        if telecom["use"] == .string("old") {
            // ContactPoint.use is a modifier: "old" says the address is no longer in use.
            collector.profile(.value, "A telecom with use \"old\" is no longer in use: send the regulator's current e-mail address.", at: "Practitioner.telecom[0].use")
        }
        var systemOK = false
        switch telecom["system"] {
        case nil:
            collector.profile(.required, "telecom.system is required and must be \"email\".", at: "Practitioner.telecom[0].system")
        case .string("email")?:
            systemOK = true
        case .string(let system)?:
            if !system.isEmpty {
                collector.profile(.value, "telecom.system must be \"email\", not \"\(system)\".", at: "Practitioner.telecom[0].system")
            }
        case let other?:
            collector.wrongType(other, expected: "a string", at: "Practitioner.telecom[0].system")
        }
        switch telecom["value"] {
        case nil:
            collector.profile(.required, "telecom.value (the e-mail address) is required.", at: "Practitioner.telecom[0].value")
            return nil
        case .string(let text)?:
            guard !text.isEmpty else { return nil }
            guard let email = EmailAddress(text) else {
                collector.profile(.value, "\"\(text)\" is not a valid e-mail address.", at: "Practitioner.telecom[0].value")
                return nil
            }
            return systemOK && entries.count == 1 ? email : nil
        case let other?:
            collector.wrongType(other, expected: "a string", at: "Practitioner.telecom[0].value")
            return nil
        }
    }
}

/// Accumulates issues and decides the category: any structural issue makes the whole body
/// invalid FHIR (400); otherwise profile issues make it unprocessable (422).
struct IssueCollector {
    private(set) var issues: [FHIRIssue] = []
    private var structuralProblem = false

    mutating func structural(_ code: FHIRIssue.Code, _ diagnostics: String, at path: String) {
        structuralProblem = true
        issues.append(FHIRIssue(code: code, diagnostics: diagnostics, expression: [path]))
    }

    mutating func wrongType(_ value: JSONValue, expected: String, at path: String) {
        // `null` has been reported by the JSON rules already.
        guard value != .null else { return }
        structural(.structure, "Expected \(expected), found \(value.typeDescription).", at: path)
    }

    mutating func profile(_ code: FHIRIssue.Code, _ diagnostics: String, at path: String) {
        issues.append(FHIRIssue(code: code, diagnostics: diagnostics, expression: [path]))
    }

    var error: FHIRError? {
        guard !issues.isEmpty else { return nil }
        return FHIRError(structuralProblem ? .invalidContent : .unprocessable, issues: issues)
    }
}

extension String {
    /// A character of Unicode category Cc (C0, DEL, C1), or a bidirectional control (U+061C,
    /// U+200E, U+200F, U+202A–U+202E, U+2066–U+2069): never part of a name, and what a terminal
    /// or a log reader would act on (bidi controls reorder what is displayed around them).
    var hasControlCharacter: Bool {
        unicodeScalars.contains {
            $0.properties.generalCategory == .control || [0x061C, 0x200E, 0x200F].contains($0.value)
                || (0x202A...0x202E).contains($0.value) || (0x2066...0x2069).contains($0.value)
        }
    }

    /// Trims the whitespace FHIR considers insignificant around a string value.
    func trimmingFHIRWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
