//! The `sluice-bench` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};
use sluice_bench::behaviour::BehaviourMix;
use sluice_bench::client::{HttpClient, Transport};
use sluice_bench::environment::{self, Machine};
use sluice_bench::load::{self, AtRest, LoadShape, RunOutput, RunPlan};
use sluice_bench::record::RequestRecord;
use sluice_bench::report::{self, RunContext, RunSummary};
use sluice_bench::stats::Slo;
use sluice_bench::workload::{self, Api, Prompt, PromptSpec, SharedPrefix};
use sluice_core::config::RuntimeConfig;
use sluice_engine::{EngineHandle, EngineOptions, GenerationRequest, SamplingParams, StreamEvent};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Streaming load generator for OpenAI-compatible servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive an OpenAI-compatible server over HTTP and report TTFT, ITL,
    /// throughput, rejections, bytes and CPU.
    Run(RunArgs),
    /// Drive Sluice's engine in-process (no HTTP) with the same workload, as
    /// the ceiling HTTP serving is measured against.
    Engine(EngineArgs),
    /// Measure what the transport costs per request, without generation:
    /// cheap `GET`s over each transport, client latency and server CPU.
    Connect(ConnectArgs),
}

#[derive(Args)]
struct ConnectArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Transports to compare: h1 (keep-alive), h1-new, h2c.
    #[arg(long, value_delimiter = ',', default_value = "h1-new,h1,h2c")]
    transports: Vec<String>,
    /// Requests per transport.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Connections in the h2c pool.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Path requested.
    #[arg(long, default_value = "/v1/models")]
    path: String,
    /// Server process id, for its CPU per request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct WorkloadArgs {
    /// Closed loop with this many concurrent streams.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["rate", "steps"])]
    concurrency: usize,
    /// Open loop: Poisson arrivals per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Most requests in flight in open-loop mode.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Step profile, concurrency@seconds: e.g. 10@0,75@60,5@120.
    #[arg(long)]
    steps: Option<String>,
    /// Requests to send (warm-up included).
    #[arg(long)]
    requests: Option<usize>,
    /// Seconds to keep sending.
    #[arg(long)]
    duration: Option<f64>,
    /// Requests sent in the first seconds are left out of the summary.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Mean prompt length in words (~tokens), before the chat template.
    #[arg(long, default_value_t = 115)]
    prompt_words: usize,
    /// Prompt lengths are uniform in mean ± spread.
    #[arg(long, default_value_t = 20)]
    prompt_spread: usize,
    /// Prompts from JSONL ({"user": ..., "system": ...} or {"prompt": ...}).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Words in a system prompt shared by a fraction of requests.
    #[arg(long)]
    shared_prefix_words: Option<usize>,
    /// Fraction of requests that carry the shared system prompt.
    #[arg(long, default_value_t = 0.8)]
    shared_prefix_fraction: f64,
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Generate max_tokens even past end-of-sequence (fixed output lengths).
    #[arg(long)]
    ignore_eos: bool,
    /// Seeds prompts, arrivals and per-request sampling seeds.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Goodput SLOs, e.g. ttft=900ms,itl=200ms,e2e=30s.
    #[arg(long)]
    slo: Option<String>,
    /// Priority class sent with each request (`priority`: interactive or
    /// batch).
    #[arg(long)]
    priority: Option<String>,
    /// Name of this run in reports and file names.
    #[arg(long, default_value = "run")]
    name: String,
    /// Folder for NAME.json and NAME.svg.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Model name to send; asked from /v1/models when omitted.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum, default_value_t = Api::Chat)]
    api: Api,
    /// h1 (keep-alive pool), h1-new (new connection per request) or h2c.
    #[arg(long, default_value = "h1")]
    transport: String,
    /// Connections in the h2c pool.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Server process id: its CPU seconds per request and token are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A server gauge to read from /metrics at every timeline sample (its
    /// own keep-alive connection), e.g. sluice:governor_active_limit.
    #[arg(long)]
    scrape_gauge: Option<String>,
    /// API key sent as a bearer token (Sluice maps keys to tenants).
    #[arg(long)]
    api_key: Option<String>,
    /// On a 429 with Retry-After, wait as told and send the request once
    /// more (recorded as the request's `retry`); a closed-loop client also
    /// waits out a second 429's Retry-After before its next request.
    #[arg(long)]
    follow_retry_after: bool,
    /// Fraction of clients that read slowly (picked per request from --seed).
    #[arg(long, default_value_t = 0.0)]
    slow_reader_fraction: f64,
    /// A slow reader's pause after each read.
    #[arg(long, default_value_t = 200)]
    slow_reader_delay_ms: u64,
    /// Fraction of clients that hang up mid-stream.
    #[arg(long, default_value_t = 0.0)]
    disconnect_fraction: f64,
    /// A disconnecting client hangs up after 1..=N text chunks (uniform).
    #[arg(long, default_value_t = 32)]
    disconnect_max_chunks: u64,
    /// Server gauges that must return to 0 after the run (leaked sequences
    /// or permits), read before and after it, e.g.
    /// sluice:num_requests_running,sluice:num_requests_parked.
    #[arg(long, value_delimiter = ',')]
    rest_gauges: Vec<String>,
    /// Longest wait after the run for --rest-gauges to reach 0.
    #[arg(long, default_value_t = 60.0)]
    rest_timeout: f64,
    #[command(flatten)]
    workload: WorkloadArgs,
}

impl RunArgs {
    fn behaviours(&self) -> Result<BehaviourMix, String> {
        let mix = BehaviourMix {
            slow_reader_fraction: self.slow_reader_fraction,
            slow_reader_delay_ms: self.slow_reader_delay_ms,
            disconnect_fraction: self.disconnect_fraction,
            disconnect_max_chunks: self.disconnect_max_chunks,
            seed: self.workload.seed,
        };
        mix.validate()?;
        Ok(mix)
    }
}

#[derive(Args)]
struct EngineArgs {
    /// GGUF model file.
    #[arg(long, default_value = sluice_core::config::DEFAULT_MODEL_PATH)]
    model: PathBuf,
    /// Runtime configuration whose engine section to use.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    workload: WorkloadArgs,
}

#[derive(Serialize)]
struct Report<'a> {
    name: &'a str,
    command: String,
    commit: String,
    machine: Machine,
    timestamp: String,
    target: Value,
    workload: Value,
    plan: &'a RunPlan,
    summary: &'a RunSummary,
    /// The server's own view: gauges before the run and once it settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_at_rest: Option<&'a AtRest>,
    timeline: &'a [load::TimelinePoint],
    requests: &'a [RequestRecord],
}

impl WorkloadArgs {
    fn plan(&self) -> Result<RunPlan, String> {
        let shape = match (&self.steps, self.rate) {
            (Some(steps), _) => LoadShape::parse_steps(steps)?,
            (None, Some(rate)) if rate > 0.0 => LoadShape::Poisson {
                rate,
                max_in_flight: self.max_in_flight,
            },
            (None, Some(_)) => return Err("--rate must be positive".into()),
            (None, None) => LoadShape::Closed {
                concurrency: self.concurrency.max(1),
            },
        };
        if self.requests.is_none() && self.duration.is_none() {
            return Err("give --requests or --duration".into());
        }
        Ok(RunPlan {
            shape,
            duration_seconds: self.duration,
            requests: self.requests,
            warmup_seconds: self.warmup,
            seed: self.seed,
        })
    }

    fn prompts(&self) -> Result<Vec<Prompt>, String> {
        match &self.prompt_file {
            Some(path) => workload::read_jsonl(path),
            None => Ok(workload::generate(
                &PromptSpec {
                    mean_words: self.prompt_words,
                    spread_words: self.prompt_spread,
                    shared_prefix: self.shared_prefix_words.map(|words| SharedPrefix {
                        words,
                        fraction: self.shared_prefix_fraction,
                    }),
                    seed: self.seed,
                },
                1024,
            )),
        }
    }

    fn slo(&self) -> Result<Slo, String> {
        self.slo.as_deref().map_or(Ok(Slo::default()), Slo::parse)
    }

    fn describe(&self) -> Value {
        json!({
            "prompt_words": self.prompt_words,
            "prompt_spread": self.prompt_spread,
            "prompt_file": self.prompt_file,
            "shared_prefix_words": self.shared_prefix_words,
            "shared_prefix_fraction": self.shared_prefix_fraction,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "ignore_eos": self.ignore_eos,
            "priority": self.priority,
            "seed": self.seed,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run_http(args).await,
            Command::Engine(args) => run_engine(args).await,
            Command::Connect(args) => run_connect(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sluice-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run_connect(args: ConnectArgs) -> Result<(), String> {
    let server_pid = args.server_pid.map(|pid| pid.to_string());
    let mut rows = Vec::new();
    println!(
        "| transport | requests | connections | connect mean ms | latency p50 / p99 ms | server CPU µs/request | client CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|---|");
    for name in &args.transports {
        let transport = Transport::parse(name, args.connections)?;
        let client = Arc::new(HttpClient::new(&args.url, transport, None)?);
        // One request first, so a pool's connections are not what is timed.
        client.probe(&args.path).await?;
        let server_before = server_pid.as_deref().and_then(environment::cpu_seconds);
        let client_before = environment::cpu_seconds("self");
        let connections_before = client.wire.connections.load(Ordering::Relaxed);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                let client = Arc::clone(&client);
                let next = Arc::clone(&next);
                let path = args.path.clone();
                let requests = args.requests;
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut connects = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < requests {
                        let probe = client.probe(&path).await?;
                        latencies.push(probe.total_seconds);
                        connects.extend(probe.connect_seconds);
                    }
                    Ok::<_, String>((latencies, connects))
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut connects = Vec::new();
        for worker in workers {
            let (l, c) = worker.await.map_err(|err| err.to_string())??;
            latencies.extend(l);
            connects.extend(c);
        }
        let requests = latencies.len() as f64;
        let per_request_us = |before: Option<f64>, after: Option<f64>| {
            before
                .zip(after)
                .map(|(before, after)| (after - before) / requests * 1e6)
        };
        let server_us = per_request_us(
            server_before,
            server_pid.as_deref().and_then(environment::cpu_seconds),
        );
        let client_us = per_request_us(client_before, environment::cpu_seconds("self"));
        latencies.sort_by(f64::total_cmp);
        let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] * 1000.0;
        let connections = client.wire.connections.load(Ordering::Relaxed) - connections_before;
        // Set-up time spread over every request, pooled or not.
        let connect_ms = connects.iter().sum::<f64>() / requests * 1000.0;
        let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
        println!(
            "| {name} | {} | {connections} | {connect_ms:.3} | {:.2} / {:.2} | {} | {} |",
            latencies.len(),
            quantile(0.5),
            quantile(0.99),
            show(server_us),
            show(client_us),
        );
        rows.push(json!({
            "transport": name,
            "requests": latencies.len(),
            "connections": connections,
            "connect_ms_per_request": connect_ms,
            "latency_p50_ms": quantile(0.5),
            "latency_p99_ms": quantile(0.99),
            "server_cpu_us_per_request": server_us,
            "client_cpu_us_per_request": client_us,
        }));
    }
    if let Some(out) = &args.out {
        let report = json!({
            "machine": environment::machine(),
            "commit": environment::commit(),
            "url": args.url,
            "path": args.path,
            "concurrency": args.concurrency,
            "results": rows,
        });
        std::fs::write(
            out,
            serde_json::to_vec_pretty(&report).expect("JSON values serialize"),
        )
        .map_err(|err| format!("cannot write {}: {err}", out.display()))?;
    }
    Ok(())
}

fn request_body(
    api: Api,
    model: &str,
    prompt: &Prompt,
    workload: &WorkloadArgs,
    index: usize,
) -> Bytes {
    let mut body = json!({
        "model": model,
        "max_tokens": workload.max_tokens,
        "temperature": workload.temperature,
        "seed": workload.seed.wrapping_add(index as u64),
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if workload.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    if let Some(priority) = &workload.priority {
        body["priority"] = json!(priority);
    }
    match api {
        Api::Chat => {
            let mut messages = Vec::new();
            if let Some(system) = &prompt.system {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(json!({"role": "user", "content": prompt.user}));
            body["messages"] = Value::Array(messages);
        }
        Api::Completions => body["prompt"] = json!(prompt.as_text()),
    }
    Bytes::from(body.to_string())
}

/// Waits out a 429's Retry-After and sends the request once more, as an
/// OpenAI client with retries does; a second 429's Retry-After is waited
/// out too, so a closed loop does not spin on refusals.
async fn follow_retry(client: &HttpClient, path: &str, body: Bytes, record: &mut RequestRecord) {
    let Some(wait) = record.retry_after_seconds.filter(|_| record.status == 429) else {
        return;
    };
    // From the refusal, which came after a wait in the queue when the
    // request waited out the server's limit.
    let sent_at = record.start_seconds + record.e2e_seconds + wait;
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let mut retry = RequestRecord::new(record.index, sent_at, record.warmup);
    retry.behaviour = record.behaviour;
    client.run_request(path, body, &mut retry).await;
    if let Some(again) = retry.retry_after_seconds.filter(|_| retry.status == 429) {
        tokio::time::sleep(Duration::from_secs_f64(again)).await;
    }
    record.retry = Some(Box::new(retry));
}

async fn fetch_model_name(url: &str) -> Result<String, String> {
    let client = HttpClient::new(url, Transport::Http1 { keep_alive: false }, None)?;
    let body = client
        .get_text("/v1/models")
        .await
        .map_err(|err| format!("cannot read {url}/v1/models: {err}"))?;
    let models: Value = serde_json::from_str(&body).map_err(|err| format!("/v1/models: {err}"))?;
    models["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "/v1/models lists no model; pass --model".into())
}

async fn run_http(args: RunArgs) -> Result<(), String> {
    let plan = args.workload.plan()?;
    let slo = args.workload.slo()?;
    let behaviours = args.behaviours()?;
    if !(args.rest_timeout.is_finite() && args.rest_timeout >= 0.0) {
        return Err("--rest-timeout must be a number of seconds".into());
    }
    let prompts = Arc::new(args.workload.prompts()?);
    let model = match &args.model {
        Some(model) => model.clone(),
        None => fetch_model_name(&args.url).await?,
    };
    let transport = Transport::parse(&args.transport, args.connections)?;
    let client = Arc::new(HttpClient::new(&args.url, transport, args.api_key.clone())?);
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..prompts.len())
            .map(|i| request_body(args.api, &model, &prompts[i], &args.workload, i))
            .collect(),
    );
    let server_pid = args.server_pid.map(|pid| pid.to_string());
    let server_cpu_before = server_pid.as_deref().and_then(environment::cpu_seconds);
    let client_cpu_before = environment::cpu_seconds("self").unwrap_or(0.0);
    let path = args.api.path();
    // Its own keep-alive connection, apart from the load's.
    let metrics_client = Arc::new(HttpClient::new(
        &args.url,
        Transport::Http1 { keep_alive: true },
        None,
    )?);
    let server_gauge = args.scrape_gauge.as_ref().map(|name| load::ServerGauge {
        client: Arc::clone(&metrics_client),
        name: name.clone(),
    });
    let gauges_before = load::read_gauges(&metrics_client, &args.rest_gauges).await;
    let output = {
        let client = Arc::clone(&client);
        let follow_retry_after = args.follow_retry_after;
        load::drive(&plan, server_gauge, move |index, mut record| {
            let client = Arc::clone(&client);
            let body = bodies[index % bodies.len()].clone();
            record.behaviour = behaviours.pick(index);
            async move {
                client.run_request(path, body.clone(), &mut record).await;
                if follow_retry_after {
                    follow_retry(&client, path, body, &mut record).await;
                }
                record
            }
        })
        .await
    };
    let at_rest = if args.rest_gauges.is_empty() {
        None
    } else {
        Some(
            load::wait_for_rest(
                gauges_before,
                Duration::from_secs_f64(args.rest_timeout),
                || load::read_gauges(&metrics_client, &args.rest_gauges),
            )
            .await,
        )
    };
    let server_cpu = match (
        server_pid.as_deref().and_then(environment::cpu_seconds),
        server_cpu_before,
    ) {
        (Some(after), Some(before)) => Some(after - before),
        _ => None,
    };
    let context = RunContext {
        warmup_seconds: plan.warmup_seconds,
        slo,
        wire_bytes_read: client.wire.read.load(Ordering::Relaxed),
        wire_bytes_written: client.wire.written.load(Ordering::Relaxed),
        connections_opened: client.wire.connections.load(Ordering::Relaxed),
        server_cpu_seconds: server_cpu,
        client_cpu_seconds: environment::cpu_seconds("self").unwrap_or(0.0) - client_cpu_before,
    };
    let target = json!({
        "kind": "http",
        "url": args.url,
        "model": model,
        "api": args.api,
        "transport": transport,
    });
    let mut workload = args.workload.describe();
    workload["clients"] = json!(behaviours);
    finish(
        &args.workload,
        workload,
        &plan,
        target,
        output,
        &context,
        at_rest.as_ref(),
    )
}

async fn run_engine(args: EngineArgs) -> Result<(), String> {
    let plan = args.workload.plan()?;
    let slo = args.workload.slo()?;
    let config = match &args.config {
        Some(path) => RuntimeConfig::load(path).map_err(|err| err.to_string())?,
        None => RuntimeConfig::default(),
    };
    let engine = EngineHandle::spawn(EngineOptions {
        model_path: args.model.clone(),
        chat_template: None,
        config: config.engine.clone(),
    });
    let model = engine.wait_ready().await.map_err(|err| err.to_string())?;
    let prompts: Arc<Vec<Vec<i32>>> = Arc::new(
        args.workload
            .prompts()?
            .iter()
            .map(|prompt| model.tokenize(&prompt.as_text(), true))
            .collect(),
    );
    let client_cpu_before = environment::cpu_seconds("self").unwrap_or(0.0);
    let workload = args.workload.clone();
    let output = load::drive(&plan, None, move |index, mut record| {
        let engine = engine.clone();
        let prompt = prompts[index % prompts.len()].clone();
        let sampling = SamplingParams {
            temperature: workload.temperature,
            seed: Some(workload.seed.wrapping_add(index as u64)),
            ..SamplingParams::default()
        };
        let max_tokens = workload.max_tokens;
        let ignore_eos = workload.ignore_eos;
        async move {
            let started = Instant::now();
            let request = GenerationRequest {
                prompt_tokens: prompt,
                sampling,
                max_tokens,
                stop: Vec::new(),
                ignore_eos,
                arrived_at: started,
                // engine.prefix_cache in the config decides.
                use_prefix_cache: true,
                on_slow_consumer: None,
                tenant: "bench".to_owned(),
                priority: Default::default(),
                cache_namespace: "bench".to_owned(),
            };
            let mut stream = match engine.submit(request) {
                Ok(stream) => stream,
                Err(err) => {
                    record.status = 503;
                    record.fail(err.to_string(), started.elapsed().as_secs_f64());
                    return record;
                }
            };
            record.status = 200;
            while let Some(event) = stream.next().await {
                let now = started.elapsed().as_secs_f64();
                match event {
                    StreamEvent::Token { .. } => record.on_token(now),
                    StreamEvent::Finished { usage, .. } => {
                        record.usage_prompt_tokens = Some(u64::from(usage.prompt_tokens));
                        record.usage_completion_tokens = Some(u64::from(usage.completion_tokens));
                        record.done = true;
                    }
                    StreamEvent::Error { message } => record.error = Some(message),
                    StreamEvent::SlowConsumer { limit } => {
                        record.error = Some(format!("not read for {} ms", limit.as_millis()));
                    }
                }
            }
            record.e2e_seconds = started.elapsed().as_secs_f64();
            record
        }
    })
    .await;
    let own_cpu = environment::cpu_seconds("self").unwrap_or(0.0) - client_cpu_before;
    let context = RunContext {
        warmup_seconds: plan.warmup_seconds,
        slo,
        wire_bytes_read: 0,
        wire_bytes_written: 0,
        connections_opened: 0,
        // The engine runs in this process: its CPU is the "server" CPU.
        server_cpu_seconds: Some(own_cpu),
        client_cpu_seconds: own_cpu,
    };
    let target = json!({
        "kind": "engine",
        "model_path": args.model,
        "engine": config.engine,
    });
    finish(
        &args.workload,
        args.workload.describe(),
        &plan,
        target,
        output,
        &context,
        None,
    )
}

fn finish(
    workload: &WorkloadArgs,
    described: Value,
    plan: &RunPlan,
    target: Value,
    output: RunOutput,
    context: &RunContext,
    at_rest: Option<&AtRest>,
) -> Result<(), String> {
    let summary = report::summarize(&output, context);
    report::print_table(&workload.name, &summary);
    if let Some(rest) = at_rest {
        report::print_at_rest(rest);
    }
    let Some(out) = &workload.out else {
        return Ok(());
    };
    std::fs::create_dir_all(out)
        .map_err(|err| format!("cannot create {}: {err}", out.display()))?;
    let report = Report {
        name: &workload.name,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: environment::commit(),
        machine: environment::machine(),
        timestamp: environment::utc_timestamp(environment::unix_now()),
        target,
        workload: described,
        plan,
        summary: &summary,
        server_at_rest: at_rest,
        timeline: &output.timeline,
        requests: &output.records,
    };
    let json_path = out.join(format!("{}.json", workload.name));
    let text = serde_json::to_string_pretty(&report).expect("reports serialize");
    std::fs::write(&json_path, text)
        .map_err(|err| format!("cannot write {}: {err}", json_path.display()))?;
    let svg_path = out.join(format!("{}.svg", workload.name));
    report::write_svg(&svg_path, &workload.name, &output.records, &output.timeline)
        .map_err(|err| format!("cannot write {}: {err}", svg_path.display()))?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}
