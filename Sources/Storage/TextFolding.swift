/// Case and accent folding that both engines apply alike, for searches a person types
/// (`Élodie`, `elodie` and `ÉLODIE` find the same account).
///
/// SQL's own `lower()` does not do: SQLite's (without ICU, as Debian's library is built)
/// folds ASCII only, and PostgreSQL's follows the database's locale (ASCII only under `C`,
/// all of Unicode under `fr_FR.UTF-8`), so one search gave three answers. Both engines give
/// SQL the function `fold_text(text)` instead: SQLite's connections register ``fold(_:)``,
/// PostgreSQL's is `translate(text, from, to)` with the strings below (migration
/// `pg-v7-fold-text`), whose semantics these are — each scalar of ``from`` becomes the
/// scalar at the same place in ``to``, the combining marks after them (U+0300–U+036F, what a
/// decomposed `é` carries) are dropped, and any other scalar is kept.
///
/// Frozen: PostgreSQL databases hold the function as its migration created it. A change
/// here is a new migration that replaces the function, and both must change together.
/// Not available to ``StorageEngine/loopRead(sql:arguments:on:)`` on SQLite (its
/// connections are plain ones, for forward-auth's fixed queries).
public enum TextFolding {
    /// ASCII capitals and the Latin-1 and Latin Extended-A letters that fold to another.
    public static let from = "ABCDEFGHIJKLMNOPQRSTUVWXYZÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞàáâãäåçèéêëìíîïñòóôõöøùúûüýÿĀāĂăĄąĆćĈĉĊċČčĎďĐđĒēĔĕĖėĘęĚěĜĝĞğĠġĢģĤĥĦħĨĩĪīĬĭĮįİĲĴĵĶķĹĺĻļĽľĿŀŁłŃńŅņŇňŊŌōŎŏŐőŒŔŕŖŗŘřŚśŜŝŞşŠšŢţŤťŦŧŨũŪūŬŭŮůŰűŲųŴŵŶŷŸŹźŻżŽž"
    /// What each scalar of ``from`` folds to: the base letter in lower case (ligatures and
    /// letters without a base, `Æ` `Œ` `Þ`, in lower case only).
    public static let to = "abcdefghijklmnopqrstuvwxyzaaaaaaæceeeeiiiiðnoooooouuuuyþaaaaaaceeeeiiiinoooooouuuuyyaaaaaaccccccccddddeeeeeeeeeegggggggghhhhiiiiiiiiiĳjjkkllllllllllnnnnnnŋooooooœrrrrrrssssssssttttttuuuuuuuuuuuuwwyyyzzzzzz"
    /// The combining diacritical marks, U+0300–U+036F: dropped.
    public static let dropped = String(String.UnicodeScalarView((0x300...0x36F).compactMap(Unicode.Scalar.init)))

    private static let table: [Unicode.Scalar: Unicode.Scalar] = {
        let pairs = zip(from.unicodeScalars, to.unicodeScalars)
        precondition(from.unicodeScalars.count == to.unicodeScalars.count)
        return Dictionary(uniqueKeysWithValues: pairs.map { ($0, $1) })
    }()

    /// `text` folded as `fold_text` folds it in SQL.
    public static func fold(_ text: String) -> String {
        var folded = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            if let mapped = table[scalar] {
                folded.append(mapped)
            } else if !(0x300...0x36F).contains(scalar.value) {
                folded.append(scalar)
            }
        }
        return String(folded)
    }
}
