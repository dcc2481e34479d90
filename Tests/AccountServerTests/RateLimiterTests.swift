@testable import AccountServer
import Logging
import NIOCore
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

@Suite("Connections per client")
struct ConnectionLimiterTests {
    /// Counted as the rate limits count: per IPv4 address (an IPv4-mapped peer is its IPv4
    /// address), per IPv6 /64, and per /48 with `networkFactor` times the room; a place given
    /// back is free again and an emptied count is dropped; a trusted proxy and a peer without
    /// an IP address are not counted; 0 is no limit.
    @Test func clientsAndNetworksAreCountedAndReleased() throws {
        let limiter = ConnectionLimiter(listener: "web", perClient: 2, exempt: [CIDR("192.0.2.0/24")!], networkFactor: 2, metrics: nil, logger: .init(label: "test"))
        func from(_ ip: String) throws -> [String]? { limiter.acquire(try SocketAddress(ipAddress: ip, port: 40000)) }

        let first = try #require(try from("198.51.100.7")), second = try #require(try from("::ffff:198.51.100.7"))
        #expect(try from("198.51.100.7") == nil, "the mapped address is the same client")
        #expect(try from("198.51.100.8") != nil, "another address has its own count")
        limiter.release(first)
        let again = try #require(try from("198.51.100.7"), "a place given back is free")
        limiter.release(again)
        limiter.release(second)
        #expect(limiter.counts["198.51.100.7"] == nil, "an emptied count is dropped")

        // Two places per /64, four per /48.
        #expect(try from("2001:db8:0:1::1") != nil && from("2001:db8:0:1::2") != nil)
        #expect(try from("2001:db8:0:1:ffff::9") == nil, "a third address of the same /64")
        #expect(try from("2001:db8:0:2::1") != nil && from("2001:db8:0:3::1") != nil)
        #expect(try from("2001:db8:0:4::1") == nil, "the /48 is full")
        #expect(try from("2001:db8:1:4::1") != nil, "another /48")

        for _ in 0..<10 { #expect(try from("192.0.2.10") == [], "a trusted proxy is not counted") }
        let unlimited = ConnectionLimiter(listener: "fhir", perClient: 0, exempt: [], metrics: nil, logger: .init(label: "test"))
        for _ in 0..<10 { #expect(unlimited.acquire(try SocketAddress(ipAddress: "203.0.113.1", port: 1)) == []) }
        #expect(limiter.acquire(nil) == [], "no address, not counted")
    }
}
