//! nh-gateway: the IoT ingestion gateway of one nursing-home facility.
//!
//! A message travels: source -> decode -> normalize -> journal (commit, then acknowledge) ->
//! InfluxDB forwarder and the HTTP API.
//!
//! - [`config`]: the site configuration (TOML), validation with every error at once, secrets.
//! - [`registry`]: the device registry: class, location, resident per device.
//! - [`reading`]: the reading type every decoder produces.
//! - [`vocabulary`]: the canonical metric names, types, ranges and enum codes.
//! - [`decode`]: pure decoders (canonical, Zigbee2MQTT, generic JSON mapping).
//! - [`normalize`]: decode + registry + time checks for one message, with rejection counters.
//! - [`buttons`]: what a button press means per device model (which presses call for help).
//! - [`sources`]: the MQTT subscriber and the embedded broker.
//! - [`journal`]: the durable local store (SQLite), group commit, history queries.
//! - [`influx`]: the InfluxDB v2 forwarder (cursor, batches, retries, quarantine).
//! - [`rules`]: the rule catalog and the stateful rules engine (on the gateway clock).
//! - [`alerts`]: the alert lifecycle (dedup, correlation, escalation, audit) and its delivery
//!   (MQTT outbox, webhooks, server-sent events).
//! - [`api`]: HTTP: health, Prometheus metrics, devices, readings, alerts and the alert stream.
//! - [`supervise`]: self-supervision: MQTT silence, InfluxDB stalls, the journal's budget and
//!   recovery, clock jumps, journaled as readings of `gateway:*` devices for rules S2-S7.
//! - [`telemetry`]: the gateway's own counters.
//! - [`clock`]: the system clock or the shared test clock.
//! - [`site_time`]: the site's local time (IANA zone with daylight saving) for night windows
//!   and shifts.
//! - [`app`]: wiring the stages together, start and shutdown.
//! - [`stages`]: stage supervision: a stage that panics or ends while running stops the process.
//! - [`demo`]: the demo facility (`nh-gateway demo`).
//! - [`auth`]: operator accounts, sessions, API tokens, roles and the login rate limit.
//! - [`web`]: the control-room page, embedded in the binary.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod buttons;
pub mod clock;
pub mod config;
pub mod decode;
pub mod demo;
pub mod diagnostics;
pub mod influx;
pub mod journal;
pub mod normalize;
pub mod reading;
pub mod registry;
pub mod rules;
pub mod safety;
pub mod secret;
pub mod site_time;
pub mod sources;
pub mod stages;
pub mod supervise;
pub mod telemetry;
pub mod vocabulary;
pub mod web;
