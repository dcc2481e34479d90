import Accounts
import Habilitation
import HTTPTypes
import Hummingbird
import Prometheus
import Storage
import Synchronization

/// The Prometheus metrics of one server instance. Owned by the application (no global
/// metrics system), scraped on the admin listener's `/metrics`. Label values are closed
/// sets (surfaces, status codes, outcome words), never identifiers, so cardinality stays
/// bounded.
final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let forwardAuthLatency: DurationHistogram
    private let argon2QueueDepth: Gauge
    /// The provider sign-in callback: our own time and the time spent waiting for the
    /// provider (code exchange, userinfo, keys), apart (docs/sso.md).
    private let providerCallbackOwn: DurationHistogram
    private let providerCallbackProvider: DurationHistogram
    private let hasher: Mutex<PasswordHasher?> = Mutex(nil)
    /// The database's connection pool (PostgreSQL), read at scrape time, with the attempts
    /// the last scrape brought (the counter grows by the difference).
    private let database: Mutex<(engine: any StorageEngine, exportedAttempts: Int)?> = Mutex(nil)
    /// Forward-auth's session lookups, counted by the habilitation service on each loop and
    /// brought here at scrape time (the hot path touches no shared counter), with what the
    /// last scrape brought: the counters grow by the difference.
    private let habilitation: Mutex<(service: HabilitationService, exported: ForwardAuthCounts)?> = Mutex(nil)
    private let lookupsFromMemo: Counter
    /// Log lines standard error's reader did not take in time (``LogLineSink``), read at
    /// scrape time, with what the last scrape brought.
    private let logLinesDropped: Counter
    private let exportedLogDrops = Mutex(0)
    private let lookupsFromDatabase: Counter
    private let lookupStatements: Counter
    /// Forward-auth runs at thousands of requests per second: its counters are made once.
    private let forwardAuthDecisions: [String: Counter]
    private let forwardAuthStatuses: [Int: Counter]
    /// The relay's counters, made once too: every slot search counts in both.
    private let upstreamStatusClasses: Mutex<[Int: Counter]> = Mutex([:])
    private let fhirStatuses: Mutex<[Int: Counter]> = Mutex([:])
    /// Counters already made, by name and label values: the registry validates names and
    /// help texts on every `makeCounter`, which showed in profiles of the INT_R02 path.
    private let counters = Mutex<[String: Counter]>([:])

    private func counter(_ name: String, _ labels: [(String, String)], help: String) -> Counter {
        let key = name + "|" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        if let existing = counters.withLock({ $0[key] }) { return existing }
        let made = registry.makeCounter(name: name, labels: labels, help: help)
        counters.withLock { $0[key] = made }
        return made
    }

    init() {
        forwardAuthLatency = registry.makeDurationHistogram(
            name: "account_server_forward_auth_duration_seconds",
            buckets: [.microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                      .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(500)],
            help: "Time to answer a forward-auth request, from the request to the decision")
        providerCallbackOwn = registry.makeDurationHistogram(
            name: "account_server_provider_callback_duration_seconds", labels: [("part", "own")],
            buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                      .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5)],
            help: "Pro Santé Connect callback time by part: own (this server) or provider (waiting for the provider)")
        providerCallbackProvider = registry.makeDurationHistogram(
            name: "account_server_provider_callback_duration_seconds", labels: [("part", "provider")],
            buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                      .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5)],
            help: "Pro Santé Connect callback time by part: own (this server) or provider (waiting for the provider)")
        let registry = self.registry
        forwardAuthDecisions = Dictionary(uniqueKeysWithValues: ["granted", "no-session", "denied"].map { decision in
            (decision, registry.makeCounter(name: "account_server_forward_auth_decisions_total", labels: [("decision", decision)],
                                            help: "Forward-auth answers by decision"))
        })
        forwardAuthStatuses = Dictionary(uniqueKeysWithValues: [200, 401, 403, 500].map { status in
            (status, registry.makeCounter(name: "account_server_http_requests_total", labels: [("surface", "forward-auth"), ("status", String(status))],
                                          help: "HTTP requests answered, by listener and status"))
        })
        let lookupsHelp = "Forward-auth session lookups by what answered them: memo (SQLite, nothing committed since the last read) or database"
        lookupsFromMemo = registry.makeCounter(name: "account_server_forward_auth_session_lookups_total", labels: [("answered_by", "memo")], help: lookupsHelp)
        lookupsFromDatabase = registry.makeCounter(name: "account_server_forward_auth_session_lookups_total", labels: [("answered_by", "database")], help: lookupsHelp)
        logLinesDropped = registry.makeCounter(name: "account_server_log_lines_dropped_total",
                                               help: "Log lines dropped because standard error's reader did not keep up (8 MiB were waiting)")
        lookupStatements = registry.makeCounter(name: "account_server_forward_auth_database_statements_total",
                                                help: "Statements forward-auth's database lookups took (PostgreSQL batches several lookups in one)")
        // Exposed at 0 from the start, so an alert on its rate needs no special case.
        _ = registry.makeCounter(name: "account_server_lockouts_total", help: "Accounts locked after repeated sign-in failures")
        argon2QueueDepth = registry.makeGauge(name: "account_server_argon2_queue_depth",
                                              help: "argon2id hashes queued or running on the bounded thread pool")
    }

    /// The hasher whose queue depth is reported at scrape time.
    func observe(hasher: PasswordHasher) { self.hasher.withLock { $0 = hasher } }

    /// The database whose connections are reported at scrape time, when its engine pools
    /// them (PostgreSQL; SQLite has nothing to report).
    func observe(database engine: any StorageEngine) {
        guard engine.connectionCounts != nil else { return }
        database.withLock { $0 = (engine, 0) }
    }

    /// The habilitation service whose forward-auth lookups are reported at scrape time.
    func observe(habilitation: HabilitationService) {
        self.habilitation.withLock { $0 = (habilitation, habilitation.forwardAuthCounts()) }
    }

    /// A request answered on one of the listeners.
    func request(surface: String, status: Int) {
        if surface == "fhir" {
            if let counter = fhirStatuses.withLock({ $0[status] }) {
                counter.increment()
                return
            }
            let made = counter("account_server_http_requests_total", [("surface", surface), ("status", String(status))], help: "HTTP requests answered, by listener and status")
            fhirStatuses.withLock { $0[status] = made }
            made.increment()
            return
        }
        counter("account_server_http_requests_total", [("surface", surface), ("status", String(status))], help: "HTTP requests answered, by listener and status").increment()
    }

    /// A request answered by the forward-auth listener (its statuses are a closed set).
    func forwardAuthRequest(status: Int) {
        if let counter = forwardAuthStatuses[status] { counter.increment() } else { request(surface: "forward-auth", status: status) }
    }

    /// An INT_R02 interaction and its outcome (created, updated, unchanged, or the refusal status).
    func intR02(interaction: String, outcome: String) {
        counter("account_server_int_r02_total", [("interaction", interaction), ("outcome", outcome)], help: "INT_R02 calls by interaction and outcome").increment()
    }

    /// The password step of a sign-in: `accepted` or the refusal reason.
    func signIn(result: String) {
        counter("account_server_sign_ins_total", [("result", result)], help: "Sign-in password steps by result").increment()
    }

    /// A session opened at the end of a sign-in, by origin.
    func sessionOpened(origin: String) {
        counter("account_server_sessions_opened_total", [("origin", origin)], help: "Sessions opened, by origin (sas or direct)").increment()
    }

    func providerSignIn(result: String) {
        counter("account_server_provider_sign_ins_total", [("result", result)], help: "Pro Santé Connect sign-in outcomes").increment()
    }

    func providerLogout(result: String) {
        counter("account_server_provider_logouts_total", [("result", result)], help: "Back-channel logout requests by outcome").increment()
    }

    func providerCallback(own: Duration, provider: Duration) {
        providerCallbackOwn.record(own)
        providerCallbackProvider.record(provider)
    }

    func lockout() {
        registry.makeCounter(name: "account_server_lockouts_total", help: "Accounts locked after repeated sign-in failures").increment()
    }

    /// A forward-auth answer (`granted`, `no-session`, `denied`) and how long it took.
    func forwardAuth(decision: String, duration: Duration) {
        forwardAuthDecisions[decision]?.increment()
        forwardAuthLatency.record(duration)
    }

    /// A request forwarded to the INT_R01 upstream: its status class (`2xx`…) or why it got
    /// none (`timeout`, `unreachable`).
    func upstream(statusClass: Int) {
        if let counter = upstreamStatusClasses.withLock({ $0[statusClass] }) {
            counter.increment()
            return
        }
        let made = counter("account_server_fhir_upstream_requests_total", [("outcome", "\(statusClass)xx")],
                           help: "FHIR requests forwarded to the INT_R01 upstream, by outcome")
        upstreamStatusClasses.withLock { $0[statusClass] = made }
        made.increment()
    }

    func upstream(outcome: String) {
        counter("account_server_fhir_upstream_requests_total", [("outcome", outcome)], help: "FHIR requests forwarded to the INT_R01 upstream, by outcome").increment()
    }

    /// A SIGHUP reload of TLS material or CRLs: `ok` or `failed` (the previous material stays).
    func reload(_ what: String, ok: Bool) {
        counter("account_server_reloads_total", [("what", what), ("result", ok ? "ok" : "failed")], help: "SIGHUP reloads by material and result").increment()
    }

    func connectionRefused(listener: String) {
        counter("account_server_connections_refused_total", [("listener", listener)],
                help: "Connections closed at once because their client held --max-connections-per-client already").increment()
    }

    func adminAction(_ action: String) {
        counter("account_server_admin_actions_total", [("action", action)], help: "Vendor admin actions that changed something").increment()
    }

    /// The exposition text (Prometheus text format 0.0.4).
    func scrape() -> [UInt8] {
        if let hasher = hasher.withLock({ $0 }) { argon2QueueDepth.set(Double(hasher.queueDepth)) }
        database.withLock { observed in
            guard let (engine, exported) = observed, let counts = engine.connectionCounts else { return }
            let help = "Database connections of this instance's pool (PostgreSQL), by state"
            for (state, value) in [("idle", counts.idle), ("lent", counts.lent), ("opening", counts.opening), ("closing", counts.closing)] {
                registry.makeGauge(name: "account_server_database_connections", labels: [("state", state)], help: help).set(Double(value))
            }
            registry.makeGauge(name: "account_server_database_requests_waiting", help: "Requests waiting for a database connection (PostgreSQL)")
                .set(Double(counts.waiting))
            registry.makeCounter(name: "account_server_database_connection_attempts_total",
                                 help: "Attempts to open a database connection, successful or not (PostgreSQL)")
                .increment(by: Int64(counts.attempts - exported))
            observed = (engine, counts.attempts)
        }
        habilitation.withLock { observed in
            guard let (service, exported) = observed else { return }
            let counts = service.forwardAuthCounts()
            lookupsFromMemo.increment(by: Int64(counts.memo - exported.memo))
            lookupsFromDatabase.increment(by: Int64(counts.database - exported.database))
            lookupStatements.increment(by: Int64(counts.statements - exported.statements))
            observed = (service, counts)
        }
        exportedLogDrops.withLock { exported in
            let total = LogLineSink.standardError.droppedTotal
            logLinesDropped.increment(by: Int64(total - exported))
            exported = total
        }
        return registry.emitToBuffer()
    }
}

/// Counts every answer of a listener by status, and gives every answer its request id
/// (`X-Request-Id`), the same one the logs and audit events carry.
struct RequestAccountingMiddleware<Limits: ListenerLimits>: RouterMiddleware {
    typealias Context = ListenerRequestContext<Limits>
    let surface: String
    let metrics: ServerMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            var response = try await next(request, context)
            response.headers[.requestID] = context.requestID
            metrics.request(surface: surface, status: Int(response.status.code))
            return response
        } catch let error as any HTTPResponseError {
            metrics.request(surface: surface, status: Int(error.status.code))
            throw error
        } catch {
            metrics.request(surface: surface, status: 500)
            throw error
        }
    }
}
