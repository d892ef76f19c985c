//! Turns a run into its summary, a human table, a JSON file and an SVG
//! report (TTFT CDF, ITL CDF, in-flight streams and TTFT over time).

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::behaviour::ClientBehaviour;
use crate::load::{AtRest, RunOutput, TimelinePoint};
use crate::record::{Outcome, RequestRecord};
use crate::stats::{Slo, Summary};

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    /// Requests sent, warm-up included.
    pub sent: usize,
    /// Requests in the summary (sent after warm-up).
    pub measured: usize,
    pub succeeded: usize,
    pub rejected: usize,
    pub errors: usize,
    /// Clients that hung up mid-stream on purpose (`--disconnect-fraction`):
    /// neither successes nor errors.
    pub client_disconnects: usize,
}

/// The requests of clients with one behaviour.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BehaviourCounts {
    pub sent: usize,
    pub clean: usize,
    /// Hung up as planned (disconnecting clients whose stream outlived their
    /// cut).
    pub disconnected: usize,
    /// Ended any other way: rejected, failed, cut by the server.
    pub unclean: usize,
}

impl BehaviourCounts {
    fn add(&mut self, outcome: Outcome) {
        self.sent += 1;
        match outcome {
            Outcome::Clean => self.clean += 1,
            Outcome::ClientDisconnected => self.disconnected += 1,
            _ => self.unclean += 1,
        }
    }
}

/// Streams of normal clients (read every chunk as it comes, never hang
/// up): any that did not end cleanly was ended by the server or the
/// network, an infrastructure-caused cancellation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WellBehaved {
    pub streams: usize,
    pub unclean: usize,
    pub unclean_rate: f64,
    pub rejected: usize,
    pub no_response: usize,
    pub http_errors: usize,
    pub truncated: usize,
    pub stream_errors: usize,
    /// The first few, as `#index behaviour outcome: error`.
    pub first_unclean: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientSummary {
    pub normal: BehaviourCounts,
    pub slow_reader: BehaviourCounts,
    pub disconnect: BehaviourCounts,
    pub well_behaved: WellBehaved,
}

fn summarize_clients(measured: &[&RequestRecord]) -> ClientSummary {
    let mut clients = ClientSummary::default();
    for record in measured {
        let outcome = record.outcome();
        match record.behaviour {
            ClientBehaviour::Normal => clients.normal.add(outcome),
            ClientBehaviour::SlowReader { .. } => clients.slow_reader.add(outcome),
            ClientBehaviour::Disconnect { .. } => clients.disconnect.add(outcome),
        }
        if !record.behaviour.well_behaved() {
            continue;
        }
        let well = &mut clients.well_behaved;
        well.streams += 1;
        let cause = match outcome {
            Outcome::Clean | Outcome::ClientDisconnected => continue,
            Outcome::Rejected => &mut well.rejected,
            Outcome::NoResponse => &mut well.no_response,
            Outcome::HttpError => &mut well.http_errors,
            Outcome::Truncated => &mut well.truncated,
            Outcome::StreamError => &mut well.stream_errors,
        };
        *cause += 1;
        well.unclean += 1;
        if well.first_unclean.len() < 5 {
            well.first_unclean.push(format!(
                "#{} {:?} {outcome:?}: {}",
                record.index,
                record.behaviour,
                record.error.as_deref().unwrap_or("-")
            ));
        }
    }
    clients.well_behaved.unclean_rate = ratio(
        clients.well_behaved.unclean as f64,
        clients.well_behaved.streams as f64,
    );
    clients
}

#[derive(Debug, Clone, Serialize)]
pub struct Goodput {
    pub slo: Slo,
    pub requests_meeting_slo: usize,
    pub fraction: f64,
    pub per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuUsage {
    pub seconds: f64,
    pub per_request: f64,
    pub per_output_token: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub counts: Counts,
    pub ttft_seconds: Summary,
    pub itl_seconds: Summary,
    pub e2e_seconds: Summary,
    pub connect_seconds: Summary,
    /// From the end of warm-up to the last measured completion.
    pub window_seconds: f64,
    pub output_tokens: u64,
    pub output_tokens_per_second: f64,
    /// Output tokens that arrived while the load was fully applied (from the
    /// end of warm-up to the last request sent), per second: excludes the
    /// cold start and the drain at the end.
    pub steady_output_tokens_per_second: f64,
    pub steady_window_seconds: f64,
    pub requests_per_second: f64,
    pub rejection_rate: f64,
    pub error_rate: f64,
    pub goodput: Option<Goodput>,
    pub wire_bytes_read: u64,
    pub wire_bytes_written: u64,
    pub connections_opened: u64,
    pub wire_bytes_per_output_token: f64,
    pub body_bytes_per_output_token: f64,
    pub server_cpu: Option<CpuUsage>,
    pub client_cpu: CpuUsage,
    pub retry_after_seconds: Summary,
    pub first_errors: Vec<String>,
    pub clients: ClientSummary,
}

/// Per-run inputs that the records alone do not carry.
pub struct RunContext {
    pub warmup_seconds: f64,
    pub slo: Slo,
    pub wire_bytes_read: u64,
    pub wire_bytes_written: u64,
    pub connections_opened: u64,
    pub server_cpu_seconds: Option<f64>,
    pub client_cpu_seconds: f64,
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

pub fn summarize(output: &RunOutput, context: &RunContext) -> RunSummary {
    let measured: Vec<&RequestRecord> = output.records.iter().filter(|r| !r.warmup).collect();
    let succeeded: Vec<&&RequestRecord> = measured.iter().filter(|r| r.succeeded()).collect();
    let rejected = measured.iter().filter(|r| r.rejected()).count();
    let client_disconnects = measured
        .iter()
        .filter(|r| r.outcome() == Outcome::ClientDisconnected)
        .count();
    let errors = measured.len() - succeeded.len() - rejected - client_disconnects;
    let ttft: Vec<f64> = succeeded.iter().filter_map(|r| r.ttft_seconds).collect();
    let itl: Vec<f64> = succeeded
        .iter()
        .flat_map(|r| r.itl_seconds.iter().copied())
        .collect();
    let e2e: Vec<f64> = succeeded.iter().map(|r| r.e2e_seconds).collect();
    let connect: Vec<f64> = output
        .records
        .iter()
        .filter_map(|r| r.connect_seconds)
        .collect();
    let retry_after: Vec<f64> = measured
        .iter()
        .filter_map(|r| r.retry_after_seconds)
        .collect();
    let window_start = context.warmup_seconds.min(output.wall_seconds);
    let window_end = measured
        .iter()
        .map(|r| r.start_seconds + r.e2e_seconds)
        .fold(window_start, f64::max);
    let window = window_end - window_start;
    let output_tokens: u64 = succeeded.iter().map(|r| r.output_tokens()).sum();
    let steady_start = context.warmup_seconds;
    let steady_end = output
        .records
        .iter()
        .map(|r| r.start_seconds)
        .fold(steady_start, f64::max);
    let steady_tokens: f64 = output
        .records
        .iter()
        .map(|r| tokens_arrived_between(r, steady_start, steady_end))
        .sum();
    let all_output_tokens: u64 = output
        .records
        .iter()
        .map(RequestRecord::output_tokens)
        .sum();
    let body_bytes: u64 = output.records.iter().map(|r| r.body_bytes).sum();
    let goodput = context.slo.is_set().then(|| {
        let meeting = succeeded
            .iter()
            .filter(|r| context.slo.met(r.ttft_seconds, r.mean_itl(), r.e2e_seconds))
            .count();
        Goodput {
            slo: context.slo,
            requests_meeting_slo: meeting,
            fraction: ratio(meeting as f64, measured.len() as f64),
            per_second: ratio(meeting as f64, window),
        }
    });
    let cpu = |seconds: f64| CpuUsage {
        seconds,
        per_request: ratio(seconds, output.records.len() as f64),
        per_output_token: ratio(seconds, all_output_tokens as f64),
    };
    let mut first_errors: Vec<String> = measured.iter().filter_map(|r| r.error.clone()).collect();
    first_errors.dedup();
    first_errors.truncate(5);
    RunSummary {
        counts: Counts {
            sent: output.records.len(),
            measured: measured.len(),
            succeeded: succeeded.len(),
            rejected,
            errors,
            client_disconnects,
        },
        ttft_seconds: Summary::of(&ttft),
        itl_seconds: Summary::of(&itl),
        e2e_seconds: Summary::of(&e2e),
        connect_seconds: Summary::of(&connect),
        window_seconds: window,
        output_tokens,
        output_tokens_per_second: ratio(output_tokens as f64, window),
        steady_output_tokens_per_second: ratio(steady_tokens, steady_end - steady_start),
        steady_window_seconds: steady_end - steady_start,
        requests_per_second: ratio(succeeded.len() as f64, window),
        rejection_rate: ratio(rejected as f64, measured.len() as f64),
        error_rate: ratio(errors as f64, measured.len() as f64),
        goodput,
        wire_bytes_read: context.wire_bytes_read,
        wire_bytes_written: context.wire_bytes_written,
        connections_opened: context.connections_opened,
        wire_bytes_per_output_token: ratio(
            context.wire_bytes_read as f64,
            all_output_tokens as f64,
        ),
        body_bytes_per_output_token: ratio(body_bytes as f64, all_output_tokens as f64),
        server_cpu: context.server_cpu_seconds.map(cpu),
        client_cpu: cpu(context.client_cpu_seconds),
        retry_after_seconds: Summary::of(&retry_after),
        first_errors,
        clients: summarize_clients(&measured),
    }
}

pub fn print_table(name: &str, summary: &RunSummary) {
    let ms = |s: f64| s * 1000.0;
    println!("\n== {name} ==");
    let c = &summary.counts;
    println!(
        "requests: {} measured ({} sent), {} ok, {} rejected, {} errors, {} client disconnects",
        c.measured, c.sent, c.succeeded, c.rejected, c.errors, c.client_disconnects
    );
    let clients = &summary.clients;
    let well = &clients.well_behaved;
    println!(
        "clients: {} normal, {} slow readers ({} unclean), {} disconnecting ({} hung up, {} finished first); \
         normal streams ended unclean: {} of {} ({:.2}%: {} rejected, {} no response, \
         {} HTTP errors, {} truncated, {} stream errors)",
        clients.normal.sent,
        clients.slow_reader.sent,
        clients.slow_reader.unclean,
        clients.disconnect.sent,
        clients.disconnect.disconnected,
        clients.disconnect.clean,
        well.unclean,
        well.streams,
        well.unclean_rate * 100.0,
        well.rejected,
        well.no_response,
        well.http_errors,
        well.truncated,
        well.stream_errors
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "ms", "mean", "p50", "p90", "p95", "p99", "max"
    );
    for (label, s) in [
        ("TTFT", &summary.ttft_seconds),
        ("ITL", &summary.itl_seconds),
        ("E2E", &summary.e2e_seconds),
        ("connect", &summary.connect_seconds),
    ] {
        println!(
            "{label:<10} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            ms(s.mean),
            ms(s.p50),
            ms(s.p90),
            ms(s.p95),
            ms(s.p99),
            ms(s.max)
        );
    }
    println!(
        "throughput: {:.1} output tok/s ({:.1} steady over {:.0} s), {:.2} req/s over {:.1} s; rejection rate {:.2}%, error rate {:.2}%",
        summary.output_tokens_per_second,
        summary.steady_output_tokens_per_second,
        summary.steady_window_seconds,
        summary.requests_per_second,
        summary.window_seconds,
        summary.rejection_rate * 100.0,
        summary.error_rate * 100.0
    );
    if let Some(goodput) = &summary.goodput {
        println!(
            "goodput: {:.1}% of requests met the SLO ({:.2} req/s)",
            goodput.fraction * 100.0,
            goodput.per_second
        );
    }
    println!(
        "wire: {:.1} bytes/output token, {} connections",
        summary.wire_bytes_per_output_token, summary.connections_opened
    );
    if let Some(cpu) = &summary.server_cpu {
        println!(
            "server CPU: {:.3} s/request, {:.2} ms/output token",
            cpu.per_request,
            cpu.per_output_token * 1000.0
        );
    }
    println!(
        "client CPU: {:.2} s total, {:.2} ms/request",
        summary.client_cpu.seconds,
        summary.client_cpu.per_request * 1000.0
    );
    for error in &summary.first_errors {
        println!("error: {error}");
    }
}

pub fn print_at_rest(rest: &AtRest) {
    let show = |value: &Option<f64>| value.map_or("missing".to_owned(), |v| v.to_string());
    let gauges: Vec<String> = rest
        .after
        .iter()
        .map(|(name, after)| {
            let before = rest.before.get(name).map_or("-".to_owned(), show);
            format!("{name} {before} → {}", show(after))
        })
        .collect();
    println!(
        "server at rest: {} after {:.1} s ({})",
        if rest.at_rest { "yes" } else { "NO" },
        rest.settle_seconds,
        gauges.join(", ")
    );
}

/// Output tokens of `record` whose chunks arrived in `[from, to]` seconds
/// of the run (chunks carrying several tokens count their share).
fn tokens_arrived_between(record: &RequestRecord, from: f64, to: f64) -> f64 {
    let Some(ttft) = record.ttft_seconds else {
        return 0.0;
    };
    let per_chunk = record.output_tokens() as f64 / record.content_chunks.max(1) as f64;
    let mut at = record.start_seconds + ttft;
    let mut count = usize::from((from..=to).contains(&at));
    for gap in &record.itl_seconds {
        at += gap;
        count += usize::from((from..=to).contains(&at));
    }
    count as f64 * per_chunk
}

fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, value)| (value, (i + 1) as f64 / n))
        .collect()
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn plot_cdf<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    samples: &[f64],
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    let points = cdf(samples);
    let max_x = points.last().map_or(1.0, |p| p.0).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("fraction")
        .draw()?;
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    Ok(())
}

/// Writes the SVG report: TTFT CDF, ITL CDF, in-flight streams over time
/// and each request's TTFT at its start time.
pub fn write_svg(
    path: &Path,
    title: &str,
    records: &[RequestRecord],
    timeline: &[TimelinePoint],
) -> PlotResult {
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let areas = root.split_evenly((2, 2));
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| r.succeeded()).collect();
    let ttft: Vec<f64> = measured.iter().filter_map(|r| r.ttft_seconds).collect();
    let itl: Vec<f64> = measured
        .iter()
        .flat_map(|r| r.itl_seconds.iter().copied())
        .collect();
    plot_cdf(&areas[0], "TTFT CDF", &ttft)?;
    plot_cdf(&areas[1], "Inter-token gap CDF", &itl)?;

    let end = timeline.last().map_or(1.0, |p| p.t).max(1.0);
    let max_streams = timeline
        .iter()
        .map(|p| (p.in_flight.max(p.target) as f64).max(p.server_gauge.unwrap_or(0.0)))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&areas[2])
        .caption(
            "Streams in flight (blue), target (red), server gauge (green)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..end, 0.0..max_streams * 1.1)?;
    chart.configure_mesh().x_desc("seconds").draw()?;
    chart.draw_series(LineSeries::new(
        timeline.iter().map(|p| (p.t, p.in_flight as f64)),
        &BLUE,
    ))?;
    chart.draw_series(LineSeries::new(
        timeline.iter().map(|p| (p.t, p.target as f64)),
        &RED,
    ))?;
    chart.draw_series(LineSeries::new(
        timeline.iter().filter_map(|p| Some((p.t, p.server_gauge?))),
        &GREEN,
    ))?;

    let max_ttft = ttft.iter().copied().fold(1e-3, f64::max);
    let mut chart = ChartBuilder::on(&areas[3])
        .caption("TTFT by request start time", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..end, 0.0..max_ttft * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("start (s)")
        .y_desc("TTFT (s)")
        .draw()?;
    chart.draw_series(measured.iter().filter_map(|r| {
        r.ttft_seconds
            .map(|ttft| Circle::new((r.start_seconds, ttft), 2, BLUE.filled()))
    }))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: usize, start: f64, ttft: f64, itls: &[f64], tokens: u64) -> RequestRecord {
        let mut record = RequestRecord::new(index, start, start < 1.0);
        record.status = 200;
        record.done = true;
        record.ttft_seconds = Some(ttft);
        record.itl_seconds = itls.to_vec();
        record.e2e_seconds = ttft + itls.iter().sum::<f64>();
        record.usage_completion_tokens = Some(tokens);
        record
    }

    #[test]
    fn summary_counts_add_up_and_exclude_warmup() {
        let mut rejected = RequestRecord::new(3, 2.0, false);
        rejected.status = 429;
        rejected.retry_after_seconds = Some(2.0);
        let mut failed = RequestRecord::new(4, 2.0, false);
        failed.fail("connect: refused".into(), 0.01);
        let output = RunOutput {
            records: vec![
                record(0, 0.5, 9.0, &[9.0], 2),
                record(1, 1.0, 0.5, &[0.1, 0.3], 3),
                record(2, 1.5, 1.5, &[0.2], 2),
                rejected,
                failed,
            ],
            wall_seconds: 10.0,
            timeline: Vec::new(),
        };
        let context = RunContext {
            warmup_seconds: 1.0,
            slo: Slo::parse("ttft=1s").unwrap(),
            wire_bytes_read: 1000,
            wire_bytes_written: 10,
            connections_opened: 2,
            server_cpu_seconds: Some(4.5),
            client_cpu_seconds: 0.5,
        };
        let summary = summarize(&output, &context);
        let counts = &summary.counts;
        assert_eq!((counts.sent, counts.measured), (5, 4));
        assert_eq!(
            counts.succeeded + counts.rejected + counts.errors + counts.client_disconnects,
            counts.measured
        );
        assert_eq!(
            (counts.succeeded, counts.rejected, counts.errors),
            (2, 1, 1)
        );
        assert_eq!(summary.ttft_seconds.count, 2);
        assert_eq!(
            summary.ttft_seconds.max, 1.5,
            "warm-up TTFT of 9 s is excluded"
        );
        assert_eq!(summary.itl_seconds.count, 3);
        assert_eq!(summary.output_tokens, 5);
        // Window: warm-up end (1.0) to the last measured end (1.5 + 1.7 = 3.2).
        assert!((summary.window_seconds - 2.2).abs() < 1e-9);
        assert!((summary.output_tokens_per_second - 5.0 / 2.2).abs() < 1e-9);
        assert_eq!(summary.rejection_rate, 0.25);
        assert_eq!(summary.error_rate, 0.25);
        let goodput = summary.goodput.unwrap();
        assert_eq!(goodput.requests_meeting_slo, 1);
        assert_eq!(goodput.fraction, 0.25);
        assert_eq!(summary.wire_bytes_per_output_token, 1000.0 / 7.0);
        assert_eq!(summary.server_cpu.unwrap().per_request, 0.9);
        assert!(summary.ttft_seconds.max <= summary.e2e_seconds.max);
    }

    #[test]
    fn only_well_behaved_clients_count_towards_infrastructure_cancellations() {
        let with = |index: usize, behaviour: ClientBehaviour, edit: fn(&mut RequestRecord)| {
            let mut r = record(index, 2.0, 0.5, &[0.1], 2);
            r.behaviour = behaviour;
            edit(&mut r);
            r
        };
        let slow = ClientBehaviour::SlowReader { delay_ms: 200 };
        let cut = ClientBehaviour::Disconnect { after_chunks: 1 };
        let output = RunOutput {
            records: vec![
                with(0, ClientBehaviour::Normal, |_| {}),
                with(1, ClientBehaviour::Normal, |r| {
                    r.done = false;
                    r.error = Some("body: connection reset".into());
                }),
                with(2, slow, |_| {}),
                with(3, slow, |r| r.status = 429),
                with(4, cut, |r| {
                    r.done = false;
                    r.disconnected = true;
                }),
                with(5, cut, |_| {}),
                with(6, cut, |r| r.error = Some("stream error: boom".into())),
                // Warm-up: left out.
                with(7, ClientBehaviour::Normal, |r| {
                    r.warmup = true;
                    r.status = 500;
                }),
            ],
            wall_seconds: 10.0,
            timeline: Vec::new(),
        };
        let context = RunContext {
            warmup_seconds: 1.0,
            slo: Slo::default(),
            wire_bytes_read: 0,
            wire_bytes_written: 0,
            connections_opened: 0,
            server_cpu_seconds: None,
            client_cpu_seconds: 0.0,
        };
        let summary = summarize(&output, &context);
        let clients = &summary.clients;
        assert_eq!(
            (
                clients.normal.sent,
                clients.normal.clean,
                clients.normal.unclean
            ),
            (2, 1, 1)
        );
        assert_eq!(
            (clients.slow_reader.sent, clients.slow_reader.unclean),
            (2, 1)
        );
        assert_eq!(
            (
                clients.disconnect.sent,
                clients.disconnect.disconnected,
                clients.disconnect.clean,
                clients.disconnect.unclean
            ),
            (3, 1, 1, 1)
        );
        let well = &clients.well_behaved;
        assert_eq!((well.streams, well.unclean), (2, 1));
        assert_eq!((well.truncated, well.rejected), (1, 0));
        assert_eq!(well.unclean_rate, 0.5);
        assert_eq!(
            well.first_unclean,
            vec!["#1 Normal Truncated: body: connection reset".to_owned()]
        );
        let counts = &summary.counts;
        assert_eq!(
            (
                counts.succeeded,
                counts.rejected,
                counts.errors,
                counts.client_disconnects
            ),
            (3, 1, 2, 1)
        );
    }

    #[test]
    fn steady_tokens_count_only_arrivals_inside_the_window() {
        // Sent at 1 s; chunks at 1.5, 1.6, 1.9, 2.4 s; 8 tokens in 4 chunks.
        let mut r = record(0, 1.0, 0.5, &[0.1, 0.3, 0.5], 8);
        r.content_chunks = 4;
        assert_eq!(tokens_arrived_between(&r, 1.55, 2.0), 4.0);
        assert_eq!(tokens_arrived_between(&r, 0.0, 10.0), 8.0);
        r.ttft_seconds = None;
        assert_eq!(tokens_arrived_between(&r, 0.0, 10.0), 0.0);
    }

    #[test]
    fn cdf_ends_at_one() {
        let points = cdf(&[3.0, 1.0, 2.0]);
        assert_eq!(points, vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]);
    }
}
