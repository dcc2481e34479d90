extension String {
    /// A host as a resolver and libpq want it: an IPv6 literal without the brackets a URL or
    /// a `HOST:PORT` setting writes around it (`[::1]` → `::1`). Foundation on Linux keeps
    /// them in `URLComponents.host`. Anything else is returned as it is.
    public var withoutIPv6Brackets: String {
        hasPrefix("[") && hasSuffix("]") ? String(dropFirst().dropLast()) : self
    }
}
