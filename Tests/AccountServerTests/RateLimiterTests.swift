@testable import AccountServer
import Testing

@Suite("Rate limiter keys")
struct RateLimiterTests {
    /// IPv6 clients share one bucket per /64 (one host can rotate through its whole /64);
    /// IPv4 and IPv4-mapped clients keep their own address.
    @Test func ipv6ClientsAreCountedPerSlash64() {
        #expect(RateLimiter.clientKey("2001:db8:1:2::1") == RateLimiter.clientKey("2001:db8:1:2:ffff:eeee:dddd:cccc"))
        #expect(RateLimiter.clientKey("2001:db8:1:2::1") != RateLimiter.clientKey("2001:db8:1:3::1"))
        #expect(RateLimiter.clientKey("2001:db8:1:2::1") == "20010db800010002::/64")
        #expect(RateLimiter.clientKey("192.0.2.7") == "192.0.2.7")
        #expect(RateLimiter.clientKey("::ffff:192.0.2.7") == "192.0.2.7")
        let limiter = RateLimiter(perMinute: 2, burst: 2)
        #expect(limiter.allow("sign-in", client: "2001:db8::1") && limiter.allow("sign-in", client: "2001:db8::2"))
        #expect(!limiter.allow("sign-in", client: "2001:db8::3"), "a third address of the same /64 shares the bucket")
        #expect(limiter.allow("sign-in", client: "2001:db8:0:1::1"), "another /64 has its own")
    }
}
