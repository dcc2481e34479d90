@testable import AccountServer
import Synchronization
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
        let frozen = ContinuousClock.now
        let limiter = RateLimiter(perMinute: 2, burst: 2, clock: MonotonicClock { frozen })
        #expect(limiter.allow("sign-in", client: "2001:db8::1") && limiter.allow("sign-in", client: "2001:db8::2"))
        #expect(!limiter.allow("sign-in", client: "2001:db8::3"), "a third address of the same /64 shares the bucket")
        #expect(limiter.allow("sign-in", client: "2001:db8:0:1::1"), "another /64 has its own")
    }

    /// A client with many /64s (a free /48 holds 65,536) shares its site's bucket, 16 times
    /// a client's: it cannot multiply its budget by its networks.
    @Test func aSlash48SharesOneLargerBucket() {
        let frozen = ContinuousClock.now
        let limiter = RateLimiter(perMinute: 2, burst: 2, clock: MonotonicClock { frozen })
        var allowed = 0
        for network in 0..<100 where limiter.allow("sign-in", client: "2001:db8:7:\(String(network, radix: 16))::1") { allowed += 1 }
        #expect(allowed == 32, "16 × the burst of 2 for the /48")
        #expect(limiter.allow("sign-in", client: "2001:db8:8::1"), "another /48 has its own")
        #expect(limiter.allow("reset", client: "2001:db8:7:1::1"), "another scope too")
    }

    /// Refused requests store nothing: a /48 sending from ever new /64s once its bucket is
    /// empty cannot fill the table and lock every new client out.
    @Test func refusedRequestsStoreNoBucket() {
        let frozen = ContinuousClock.now
        let limiter = RateLimiter(perMinute: 10, burst: 10, maximumKeys: 1_000, clock: MonotonicClock { frozen })
        for network in 0..<20_000 { _ = limiter.allow("sign-in", client: "2001:db8:9:\(String(network, radix: 16))::1") }
        #expect(limiter.counts.buckets <= 1 + 160, "the /48's bucket and the /64s it let through: \(limiter.counts.buckets)")
        #expect(limiter.allow("sign-in", client: "192.0.2.44"), "a newcomer is still served")
    }

    /// The table holds only clients seen within a refill time, is swept at most every 5 s
    /// (not on every request), and never grows past its cap: new clients are refused then.
    @Test func theTableStaysBoundedAndIsSweptRarely() {
        let clock = Mutex(ContinuousClock.now)
        let limiter = RateLimiter(perMinute: 10, burst: 10, maximumKeys: 1_000, clock: MonotonicClock { clock.withLock { $0 } })
        for index in 0..<1_000 { #expect(limiter.allow("k\(index)")) }
        #expect(limiter.counts.buckets == 1_000)
        #expect(!limiter.allow("newcomer"), "a full table refuses a new client")
        #expect(limiter.allow("k1"), "a known one goes on")
        for _ in 0..<10_000 { _ = limiter.allow("k2") }
        #expect(limiter.counts.sweeps == 1, "swept once, not per request")
        clock.withLock { $0 = $0.advanced(by: .seconds(61)) }
        #expect(limiter.allow("newcomer"), "refilled buckets are dropped at the next sweep")
        #expect(limiter.counts.buckets == 1 && limiter.counts.sweeps == 2)
    }
}
