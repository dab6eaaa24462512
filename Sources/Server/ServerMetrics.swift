import Engine
import Foundation
import NIOConcurrencyHelpers
import Prometheus

/// `/metrics` in Prometheus text format (swift-prometheus). Every series exists twice: under the names vLLM
/// exports (`vllm:num_requests_running`, `vllm:time_to_first_token_seconds`, ...; routers and Grafana dashboards
/// read these) and under our own `ktransformers_*` names, with a `model_name` label.
///
/// Gauges and token counters come from the engine's statistics at scrape time; latency histograms are recorded by
/// each request as it streams (`observe`); step time and batch size by the engine's step observer.
public final class ServerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let running: [Gauge]
    private let waiting: [Gauge]
    private let kvUsage: [Gauge]
    private let promptTokens: [Counter]
    private let generationTokens: [Counter]
    private let preemptions: [Counter]
    private let prefixQueries: [Counter]
    private let prefixHits: [Counter]
    private let ttft: [ValueHistogram]
    private let itl: [ValueHistogram]
    private let e2e: [ValueHistogram]
    private let queue: [ValueHistogram]
    private let promptLength: [ValueHistogram]
    private let generationLength: [ValueHistogram]
    private let stepTime: ValueHistogram
    private let batchSize: ValueHistogram
    private let batchTokens: ValueHistogram
    private let finished: NIOLockedValueBox<[String: [Counter]]>
    private let model: String
    /// Engine totals at the last scrape (counters advance by the difference).
    private let last = NIOLockedValueBox<EngineStats?>(nil)

    static let latencyBuckets: [Double] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5,
                                           7.5, 10, 20, 40, 80, 160, 640, 2560]
    static let tokenBuckets: [Double] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]

    public init(model: String) {
        self.model = model
        let r = registry
        let labels = [("model_name", model)]
        func d(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }
        func gauges(_ v: String, _ k: String, _ help: String) -> [Gauge] {
            [r.makeGauge(descriptor: d(v, help), labels: labels), r.makeGauge(descriptor: d(k, help), labels: labels)]
        }
        func counters(_ v: String, _ k: String, _ help: String) -> [Counter] {
            [r.makeCounter(descriptor: d(v, help), labels: labels), r.makeCounter(descriptor: d(k, help), labels: labels)]
        }
        func histograms(_ v: String, _ k: String, _ help: String, _ buckets: [Double]) -> [ValueHistogram] {
            [r.makeValueHistogram(descriptor: d(v, help), labels: labels, buckets: buckets),
             r.makeValueHistogram(descriptor: d(k, help), labels: labels, buckets: buckets)]
        }
        running = gauges("vllm:num_requests_running", "ktransformers_requests_running", "Requests in the running batch.")
        waiting = gauges("vllm:num_requests_waiting", "ktransformers_requests_waiting", "Requests waiting to be scheduled.")
        kvUsage = gauges("vllm:kv_cache_usage_perc", "ktransformers_kv_cache_usage_ratio",
                         "Fraction of KV cache pages held by requests (1 = full).")
        promptTokens = counters("vllm:prompt_tokens_total", "ktransformers_prompt_tokens_total",
                                "Prompt tokens computed (prefix-cache hits excluded).")
        generationTokens = counters("vllm:generation_tokens_total", "ktransformers_generation_tokens_total", "Tokens generated.")
        preemptions = counters("vllm:num_preemptions_total", "ktransformers_preemptions_total", "Requests preempted.")
        prefixQueries = counters("vllm:prefix_cache_queries_total", "ktransformers_prefix_cache_query_tokens_total",
                                 "Prompt tokens looked up in the prefix cache.")
        prefixHits = counters("vllm:prefix_cache_hits_total", "ktransformers_prefix_cache_hit_tokens_total",
                              "Prompt tokens found in the prefix cache.")
        ttft = histograms("vllm:time_to_first_token_seconds", "ktransformers_time_to_first_token_seconds",
                          "Seconds from a request's arrival to its first token.", Self.latencyBuckets)
        itl = histograms("vllm:inter_token_latency_seconds", "ktransformers_inter_token_latency_seconds",
                         "Seconds between consecutive tokens of a request.", Self.latencyBuckets)
        e2e = histograms("vllm:e2e_request_latency_seconds", "ktransformers_e2e_request_latency_seconds",
                         "Seconds from a request's arrival to its last token.", Self.latencyBuckets)
        queue = histograms("vllm:request_queue_time_seconds", "ktransformers_request_queue_time_seconds",
                           "Seconds a request waited in the engine before its first step.", Self.latencyBuckets)
        promptLength = histograms("vllm:request_prompt_tokens", "ktransformers_request_prompt_tokens",
                                  "Prompt tokens per finished request.", Self.tokenBuckets)
        generationLength = histograms("vllm:request_generation_tokens", "ktransformers_request_generation_tokens",
                                      "Generated tokens per finished request.", Self.tokenBuckets)
        stepTime = r.makeValueHistogram(descriptor: d("ktransformers_step_seconds", "Seconds per engine step."),
                                        labels: labels, buckets: Self.latencyBuckets)
        batchSize = r.makeValueHistogram(descriptor: d("ktransformers_batch_sequences", "Sequences per engine step."),
                                         labels: labels, buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256])
        batchTokens = r.makeValueHistogram(descriptor: d("ktransformers_batch_tokens", "Tokens per engine step."),
                                           labels: labels, buckets: Self.tokenBuckets)
        finished = NIOLockedValueBox([:])
    }

    /// One engine step (the engine's step observer).
    public func observeStep(seconds: Double, sequences: Int, tokens: Int) {
        stepTime.record(seconds)
        batchSize.record(Double(sequences))
        batchTokens.record(Double(tokens))
    }

    /// A request's first token.
    func observeFirstToken(after seconds: Double) { ttft.forEach { $0.record(seconds) } }

    /// The time a request waited before the engine first scheduled it.
    func observeQueue(_ seconds: Double) { queue.forEach { $0.record(seconds) } }

    /// The gap before a later token.
    func observeInterToken(_ seconds: Double) { itl.forEach { $0.record(seconds) } }

    /// A finished request: its latency, lengths and finish reason (`vllm:request_success_total{finished_reason}`).
    func observeFinished(after seconds: Double, promptTokens p: Int, generatedTokens g: Int, reason: String) {
        e2e.forEach { $0.record(seconds) }
        promptLength.forEach { $0.record(Double(p)) }
        generationLength.forEach { $0.record(Double(g)) }
        let counters = finished.withLockedValue { m -> [Counter] in
            if let c = m[reason] { return c }
            let labels = [("model_name", model), ("finished_reason", reason)]
            let c = [registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "vllm:request_success_total", unitName: "",
                                                                            helpText: "Finished requests by reason."), labels: labels),
                     registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "ktransformers_requests_finished_total",
                                                                            unitName: "", helpText: "Finished requests by reason."),
                                          labels: labels)]
            m[reason] = c
            return c
        }
        counters.forEach { $0.increment() }
    }

    /// The text exposition, after bringing the engine's gauges and counters up to date.
    public func render(_ s: EngineStats) -> String {
        running.forEach { $0.set(Double(s.running)) }
        waiting.forEach { $0.set(Double(s.waiting)) }
        let held = s.kvPagesTotal - s.kvPagesFree
        kvUsage.forEach { $0.set(s.kvPagesTotal > 0 ? Double(held) / Double(s.kvPagesTotal) : 0) }
        let before = last.withLockedValue { old -> EngineStats? in
            defer { old = s }
            return old
        }
        func advance(_ c: [Counter], _ value: KeyPath<EngineStats, Int>) {
            let now = s[keyPath: value], then = before?[keyPath: value] ?? 0
            if now > then { c.forEach { $0.increment(by: Int64(now - then)) } }
        }
        advance(promptTokens, \.promptTokens)
        advance(generationTokens, \.generatedTokens)
        advance(preemptions, \.preemptions)
        advance(prefixQueries, \.prefixCacheQueryTokens)
        advance(prefixHits, \.prefixCacheHitTokens)
        return registry.emitToString()
    }
}
