import CQRencode

/// Renders text (an `otpauth://` URI) as an inline SVG QR code with libqrencode, error
/// correction M, with the 4-module quiet zone scanners need.
enum QRCode {
    static func svg(_ text: String, moduleSize: Int = 6) -> String? {
        guard let code = QRcode_encodeString(text, 0, QR_ECLEVEL_M, QR_MODE_8, 1) else { return nil }
        defer { QRcode_free(code) }
        let width = Int(code.pointee.width)
        let quiet = 4
        let size = (width + 2 * quiet) * moduleSize
        var path = ""
        for y in 0..<width {
            for x in 0..<width where code.pointee.data[y * width + x] & 1 == 1 {
                path += "M\((x + quiet) * moduleSize) \((y + quiet) * moduleSize)h\(moduleSize)v\(moduleSize)h-\(moduleSize)z"
            }
        }
        return """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(size)" height="\(size)" viewBox="0 0 \(size) \(size)" role="img" aria-label="Code QR à scanner avec votre application d’authentification"><rect width="100%" height="100%" fill="#fff"/><path d="\(path)" fill="#000"/></svg>
        """
    }
}
