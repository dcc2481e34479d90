/// French typography for what a regulator reads: a no-break space before `:` and inside
/// guillemets, a narrow no-break space before `;`, `?` and `!` (Imprimerie nationale's rules),
/// so that no line of a page or mail starts with the punctuation that ends the one before.
/// Applied to whole pages, it changes text only: markup, attribute values and the inline
/// script are left as they are.
enum FrenchTypography {
    static let noBreakSpace: Character = "\u{00A0}"
    static let narrowNoBreakSpace: Character = "\u{202F}"

    /// The space that belongs before `character`, if it is punctuation that takes one.
    private static func spaceBefore(_ character: Character) -> Character? {
        switch character {
        case ":", "»": noBreakSpace
        case ";", "?", "!": narrowNoBreakSpace
        default: nil
        }
    }

    /// `text` with the ordinary spaces around French punctuation made unbreakable.
    static func apply(toText text: String) -> String {
        guard text.contains(where: { $0 == ":" || $0 == ";" || $0 == "?" || $0 == "!" || $0 == "«" || $0 == "»" }) else { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 16)
        var previous: Character?
        for character in text {
            if previous == " ", let space = Self.spaceBefore(character) {
                out.removeLast()
                out.append(space)
            }
            if character == " ", previous == "«" {
                out.append(noBreakSpace)
                previous = noBreakSpace
                continue
            }
            out.append(character)
            previous = character
        }
        return out
    }

    /// ``apply(toText:)`` on the text of an HTML page: what lies between tags, outside
    /// `<script>` and `<style>` elements.
    static func apply(toHTML html: String) -> String {
        var out = ""
        out.reserveCapacity(html.utf8.count + 64)
        var rest = Substring(html)
        while !rest.isEmpty {
            guard let open = rest.firstIndex(of: "<") else {
                out += apply(toText: String(rest))
                break
            }
            out += apply(toText: String(rest[..<open]))
            rest = rest[open...]
            // A raw-text element: copied whole, to its end tag.
            let lowered = rest.prefix(8).lowercased()
            if let element = ["script", "style"].first(where: { lowered.hasPrefix("<" + $0) }) {
                if let end = rest.range(of: "</" + element + ">", options: .caseInsensitive) {
                    out += rest[..<end.upperBound]
                    rest = rest[end.upperBound...]
                } else {
                    out += rest
                    rest = ""
                }
                continue
            }
            // A tag, up to its `>` (attribute values are escaped: no `>` inside).
            if let close = rest.firstIndex(of: ">") {
                out += rest[...close]
                rest = rest[rest.index(after: close)...]
            } else {
                out += rest
                rest = ""
            }
        }
        return out
    }
}
