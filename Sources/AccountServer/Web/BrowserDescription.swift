import Foundation

/// A session's browser as « Mon compte » names it, from its `User-Agent`: « Firefox sous
/// Windows ». Enough for a regulator to recognise their own browsers, or one that is not
/// theirs; the header itself is never shown (it is the client's text, often long, and says
/// nothing more a person would read).
enum BrowserDescription {
    static func french(_ userAgent: String?) -> String {
        guard let agent = userAgent, !agent.isEmpty else { return "Navigateur non identifié" }
        let browser: String?
        // Order matters: Edge and Opera also say Chrome, Chrome also says Safari.
        if agent.contains("Edg/") || agent.contains("EdgA/") || agent.contains("EdgiOS/") { browser = "Edge" }
        else if agent.contains("OPR/") { browser = "Opera" }
        else if agent.contains("Firefox/") || agent.contains("FxiOS/") { browser = "Firefox" }
        else if agent.contains("SamsungBrowser/") { browser = "Samsung Internet" }
        else if agent.contains("Chrome/") || agent.contains("CriOS/") || agent.contains("Chromium/") { browser = "Chrome" }
        else if agent.contains("Safari/") && agent.contains("Version/") { browser = "Safari" }
        else { browser = nil }
        let system: String?
        if agent.contains("Windows NT") { system = "Windows" }
        else if agent.contains("Android") { system = "Android" }
        else if agent.contains("iPhone") { system = "iPhone" }
        else if agent.contains("iPad") { system = "iPad" }
        else if agent.contains("CrOS") { system = "ChromeOS" }
        else if agent.contains("Mac OS X") || agent.contains("Macintosh") { system = "macOS" }
        else if agent.contains("Linux") { system = "Linux" }
        else { system = nil }
        switch (browser, system) {
        // « sur » a device, « sous » a system.
        case let (browser?, system?) where system == "iPhone" || system == "iPad": return "\(browser) sur \(system)"
        case let (browser?, system?): return "\(browser) sous \(system)"
        case let (browser?, nil): return browser
        case let (nil, system?) where system == "iPhone" || system == "iPad": return "Navigateur non reconnu sur \(system)"
        case let (nil, system?): return "Navigateur non reconnu sous \(system)"
        case (nil, nil): return "Navigateur non reconnu"
        }
    }
}
