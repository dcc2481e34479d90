@testable import AccountServer
import Foundation
import Testing

@Suite("QR code")
struct QRCodeTests {
    @Test func rendersAnSVGWithQuietZone() throws {
        let uri = "otpauth://totp/Espace%20r%C3%A9gulateur%3Ajules.marius%40test.com?secret=MZXW6YTBOI&issuer=Espace%20r%C3%A9gulateur"
        let svg = try #require(QRCode.svg(uri))
        #expect(svg.hasPrefix("<svg") && svg.contains("<path d=\"M") && svg.contains("viewBox"))
        // Finder pattern: the top-left module of the symbol (after the 4-module quiet zone) is dark.
        #expect(svg.contains("M24 24h6v6h-6z"))
        if let directory = ProcessInfo.processInfo.environment["QR_PREVIEW_DIR"] {
            try svg.write(toFile: directory + "/qr.svg", atomically: true, encoding: .utf8)
        }
    }
}
