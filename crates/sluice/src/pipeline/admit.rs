//! Pipeline step two: from a tokenized request to a running generation.
//! Fit the context, charge the tenant's token rate, decide the flags once,
//! plan speculation, wait for admission (prefilling meanwhile when KV prep
//! is on), submit to the engine.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::admission::{Priority, Rejection, TokenCharge, Urgency};
use sluice_core::flags::{Cohort, Decision};
use sluice_core::registry::{EndReason, Stage, StreamHandle};
use sluice_engine::{
    EngineError, GenerationRequest, GenerationStream, LoadedModel, PrepHandle, SlowConsumerHook,
};

use super::generation::{Driver, Generation};
use super::prepare::Prepared;
use super::speculation::Speculation;
use super::{Endpoint, Pipeline, PipelineError, PreEngineTimes};
use crate::telemetry::{RejectedBy, RequestInfo, RequestObserver};

/// How a request got to the engine.
struct Admitted {
    /// From the end of tokenizing to the engine's queue.
    queue: Duration,
    priority: Priority,
    /// Through the governor's admission, which then sees its latencies.
    governed: bool,
}

/// This request's feature-flag decisions, from one snapshot of the flags.
struct FlagDecisions {
    prefix_cache: Decision,
    speculation: Decision,
    kv_prep: Decision,
    /// Cohorts of the flags in partial rollout, which the QoS window compares.
    canaries: Vec<(&'static str, Cohort)>,
}

impl Pipeline {
    /// The stream moves into the generation only once nothing can fail any
    /// more, so the caller holds it on every error.
    pub(super) async fn admit_and_submit(
        self: &Arc<Self>,
        endpoint: Endpoint,
        prepared: Prepared,
        stream: &mut Option<StreamHandle>,
    ) -> Result<Generation, PipelineError> {
        let Some(handle) = stream.as_mut() else {
            return Err(PipelineError::Internal("no stream to admit".to_owned()));
        };
        let tenant = handle.tenant().to_owned();
        let model = self.ready_model()?;
        let max_tokens = fit_context(&model, &prepared)?;
        let prompt_tokens = prepared.prompt.len();
        let context = model.sequence_context(prompt_tokens + max_tokens as usize);
        // Charged before queueing, so a tenant over its rate is answered at
        // once and holds no queue place. The charge is prompt plus
        // max_tokens, the most the request can use: with a guess instead,
        // concurrent requests could all pass against the same tokens and
        // overshoot the rate. What the answer leaves unused comes back when
        // it ends (`TokenCharge`).
        let token_charge = self
            .quota
            .charge(&tenant, prompt_tokens as u64 + u64::from(max_tokens))
            .await
            .map_err(|rejection| self.rejected(&tenant, rejection))?;
        let flags = self.decide_flags(&tenant);
        let namespace = cache_namespace(&tenant, prepared.params.cache_salt.as_deref());
        let speculation = Speculation::plan(
            &self.openings,
            flags.speculation.on,
            &namespace,
            &prepared.prompt,
            &prepared.params,
            max_tokens,
            context,
        );
        let urgency = self.urgency(&tenant, &prepared, max_tokens);
        // A request for a long pool is outside the governor: it waits in
        // that pool's own queue, and the engine gives long pools a bounded
        // share (`round_budget::LongShare`). Its minutes-long first token
        // would otherwise hold the governor's prompt gate shut and its TTFT
        // drive the limit down: beside four documents the governor shed
        // 99.8 % of short chats (benchmarks/results/2026-12-07-65282cb2a380-rag-mix).
        let governed = context <= model.short_context();
        let queued_at = Instant::now();
        let engine_stream = if speculation.serves_whole_answer() {
            None
        } else {
            let prep = if governed {
                self.wait_for_admission(handle, &flags, &prepared, max_tokens, &namespace, urgency)
                    .await?
            } else {
                None
            };
            let submission = Submission {
                prepared: &prepared,
                speculation: &speculation,
                flags: &flags,
                namespace,
                max_tokens,
                priority: urgency.priority,
            };
            let engine_stream = self.submit(handle, submission, prep)?;
            handle.advance(Stage::Prefilling);
            Some(engine_stream)
        };
        let queue = queued_at.elapsed();
        self.metrics.observe_stage("admission", queue);
        let Some(stream) = stream.take() else {
            return Err(PipelineError::Internal("no stream to admit".to_owned()));
        };
        Ok(self.generation(
            endpoint,
            stream,
            prepared,
            speculation,
            flags,
            engine_stream,
            token_charge,
            Admitted {
                queue,
                priority: urgency.priority,
                governed,
            },
        ))
    }

    /// The request's class (its own, else its tenant's) and deadline (its
    /// own, else the SLO's for an interactive request), counted from its
    /// arrival; the key its retry will match a booking by.
    fn urgency(&self, tenant: &str, prepared: &Prepared, max_tokens: u32) -> Urgency {
        let params = &prepared.params;
        let priority = params
            .priority
            .unwrap_or_else(|| self.admission.default_priority(tenant));
        let deadline = if self.deadlines.shedding {
            params
                .ttft_deadline
                .or(match priority {
                    Priority::Interactive => self.deadlines.interactive,
                    Priority::Batch => None,
                })
                .map(|deadline| deadline.saturating_sub(params.arrived_at.elapsed()))
        } else {
            None
        };
        let retry_key = self
            .retry_keys
            .hash_one((tenant, &prepared.prompt, max_tokens, priority));
        Urgency {
            priority,
            deadline,
            retry_key,
        }
    }

    fn decide_flags(&self, tenant: &str) -> FlagDecisions {
        let flags = self.flags.snapshot();
        let prefix_cache = flags.prefix_cache.decide("prefix_cache", tenant);
        let speculation = flags
            .first_token_speculation
            .decide("first_token_speculation", tenant);
        let kv_prep = flags.kv_prep.decide("kv_prep", tenant);
        let canaries = [
            ("prefix_cache", &flags.prefix_cache, prefix_cache),
            ("kv_prep", &flags.kv_prep, kv_prep),
            (
                "first_token_speculation",
                &flags.first_token_speculation,
                speculation,
            ),
        ]
        .into_iter()
        .filter(|(_, flag, _)| flag.splits_traffic())
        .map(|(name, _, decision)| (name, decision.cohort))
        .collect();
        FlagDecisions {
            prefix_cache,
            speculation,
            kv_prep,
            canaries,
        }
    }

    /// Waits for an admission permit, which moves into the stream's record
    /// so the stream's end releases it, whatever the end is. The engine may
    /// prefill the prompt meanwhile; dropping the returned prep (client
    /// gone, rejected) frees that KV.
    async fn wait_for_admission(
        &self,
        handle: &mut StreamHandle,
        flags: &FlagDecisions,
        prepared: &Prepared,
        max_tokens: u32,
        namespace: &str,
        urgency: Urgency,
    ) -> Result<Option<PrepHandle>, PipelineError> {
        let prep = (flags.kv_prep.on && flags.prefix_cache.on && self.would_queue()).then(|| {
            self.engine
                .prepare(prepared.prompt.clone(), max_tokens, namespace)
        });
        let asked_at = Instant::now();
        let predicted_wait = handle
            .admit(&self.admission, urgency)
            .await
            .map_err(|rejection| self.rejected(handle.tenant(), rejection))?;
        if let Some(predicted) = predicted_wait {
            self.metrics
                .observe_wait_prediction(predicted, asked_at.elapsed());
        }
        Ok(prep)
    }

    /// Whether a request would wait for admission. A guess: the queue may
    /// move before the request joins it.
    fn would_queue(&self) -> bool {
        let admission = self.admission.snapshot();
        admission.queued > 0 || admission.active >= admission.limit
    }

    fn submit(
        &self,
        handle: &mut StreamHandle,
        submission: Submission<'_>,
        prep: Option<PrepHandle>,
    ) -> Result<GenerationStream, PipelineError> {
        let Submission {
            prepared,
            speculation,
            flags,
            namespace,
            max_tokens,
            priority,
        } = submission;
        let served = speculation.served_token_ids();
        let mut prompt_tokens = prepared.prompt.clone();
        prompt_tokens.extend_from_slice(&served);
        let params = &prepared.params;
        let request = GenerationRequest {
            prompt_tokens,
            sampling: params.sampling.clone(),
            max_tokens: max_tokens - served.len() as u32,
            stop: params.stop.clone(),
            ignore_eos: params.ignore_eos,
            arrived_at: params.arrived_at,
            use_prefix_cache: flags.prefix_cache.on,
            cache_namespace: namespace,
            tenant: handle.tenant().to_owned(),
            priority,
            on_slow_consumer: Some(self.slow_consumer_hook(handle.id())),
        };
        self.engine.submit_prepared(request, prep).map_err(|err| {
            // A full engine turns the request away; anything else is the
            // engine failing it.
            if !matches!(err, EngineError::QueueFull { .. }) {
                handle.end(EndReason::Failed);
            }
            PipelineError::Engine(err)
        })
    }

    /// Ends the stream's record (releasing its admission permit) when the
    /// engine ends the stream for not being read: the writer only runs when
    /// the client reads, which a stalled client does not.
    fn slow_consumer_hook(&self, stream_id: u64) -> SlowConsumerHook {
        let streams = Arc::clone(&self.streams);
        SlowConsumerHook(Arc::new(move || {
            streams.end(stream_id, EndReason::SlowConsumer);
        }))
    }

    #[allow(clippy::too_many_arguments)] // the parts of one request, assembled once
    fn generation(
        &self,
        endpoint: Endpoint,
        stream: StreamHandle,
        prepared: Prepared,
        speculation: Speculation,
        flags: FlagDecisions,
        engine_stream: Option<GenerationStream>,
        token_charge: Option<TokenCharge>,
        admitted: Admitted,
    ) -> Generation {
        let Admitted {
            queue,
            priority,
            governed,
        } = admitted;
        let prompt_tokens = prepared.prompt.len();
        let id = stream.request_id().to_owned();
        let observer = RequestObserver::new(
            Arc::clone(&self.metrics),
            governed.then(|| Arc::clone(&self.latency)),
            stream,
            RequestInfo {
                endpoint: endpoint.as_str(),
                prompt_tokens,
                cohorts: vec![("prefix_cache", flags.prefix_cache.cohort)],
                canaries: flags.canaries,
                token_charge,
                priority,
            },
        );
        Generation {
            id,
            endpoint,
            model: self.served_name.clone(),
            stream: prepared.params.stream,
            include_usage: prepared.params.include_usage,
            prefix_hint: prepared.prefix_hint,
            times: PreEngineTimes {
                tokenize: prepared.tokenize_time,
                queue,
            },
            driver: Driver::new(
                engine_stream,
                speculation.into_opening(&self.openings, prompt_tokens as u32),
                observer,
                Arc::clone(&self.streams),
                self.stream_limits,
            ),
        }
    }

    /// Counts a rejection where it belongs (the server's or the tenant's
    /// window) and wraps it for the error mapping.
    fn rejected(&self, tenant: &str, rejection: Rejection) -> PipelineError {
        let (reason, by) = match &rejection {
            Rejection::QueueFull { .. } => ("queue_full", RejectedBy::Server),
            Rejection::WaitTimedOut { .. } => ("wait_timeout", RejectedBy::Server),
            Rejection::TenantQueueFull { .. } => ("tenant_limit", RejectedBy::TenantLimit),
            Rejection::TokenRateExceeded { .. } => {
                ("tenant_tokens_per_minute", RejectedBy::TenantLimit)
            }
            Rejection::Shed { .. } => ("deadline", RejectedBy::Server),
            Rejection::QuotaStoreUnavailable { .. } => ("quota_store", RejectedBy::Server),
            Rejection::Closed => ("draining", RejectedBy::Server),
        };
        self.metrics.count_rejected(reason, tenant, by);
        PipelineError::Rejected {
            tenant: tenant.to_owned(),
            rejection,
        }
    }
}

/// What [`Pipeline::submit`] hands the engine, decided before admission.
struct Submission<'a> {
    prepared: &'a Prepared,
    speculation: &'a Speculation,
    flags: &'a FlagDecisions,
    namespace: String,
    max_tokens: u32,
    priority: Priority,
}

/// Whose cached prompts a request may reuse: its tenant's, under the same
/// `cache_salt` (none is a namespace of its own). The prefix cache, KV copies,
/// KV preps and cached openings match only within one namespace, so no
/// tenant's `cached_tokens` or speculated opening tells it anything about
/// another tenant's prompts (the class of vLLM's CVE-2025-46570). The
/// tenant's length first: no other tenant and salt spell the same string.
fn cache_namespace(tenant: &str, cache_salt: Option<&str>) -> String {
    format!("{}:{tenant}:{}", tenant.len(), cache_salt.unwrap_or(""))
}

/// The most tokens the request may generate: what it asked for, within the
/// room its sequence leaves after the prompt.
fn fit_context(model: &LoadedModel, prepared: &Prepared) -> Result<u32, PipelineError> {
    let served = model.served_context();
    let prompt_tokens = prepared.prompt.len();
    if prompt_tokens >= served as usize {
        return Err(PipelineError::ContextLength {
            served,
            trained: model.trained_context,
            prompt_tokens,
            param: prepared.prompt_param,
        });
    }
    let room = |context: u32| context - prompt_tokens as u32;
    // Without `max_tokens` a request may generate until its sequence is
    // full: the smallest that holds its prompt, so a short chat does not
    // take a long sequence.
    Ok(match prepared.params.max_tokens {
        Some(requested) => requested.min(room(served)),
        None => room(model.sequence_context(prompt_tokens + 1)),
    })
}
