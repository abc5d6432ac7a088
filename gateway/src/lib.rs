//! nh-gateway: the IoT ingestion gateway of one nursing-home facility.
//!
//! A message travels: source -> decode -> normalize -> journal (commit, then acknowledge) ->
//! InfluxDB forwarder and the HTTP API.
//!
//! - [`config`]: the site configuration (TOML) assembled from each component's section,
//!   validation with every error at once, and [`config::check`] (`nh-gateway validate`).
//! - [`diagnostics`]: reading TOML with every error reported with its file, line and key.
//! - [`secret`]: tokens and passwords from the environment or a file, redacted when formatted.
//! - [`safety`]: what "life-safety" means to the priority lane, the flood limit and the disk
//!   budget, stated side by side.
//! - [`registry`]: the device registry: class, location, resident per device.
//! - [`reading`]: the reading type every decoder produces.
//! - [`vocabulary`]: the canonical metric names, types, ranges and enum codes.
//! - [`decode`]: pure decoders: [`decode::canonical`], [`decode::zigbee2mqtt`], the generic JSON
//!   mapping [`decode::json_map`], the MR60FDA1 radar's frames [`decode::mr60fda1`], Modbus RTU
//!   [`decode::modbus`] and register maps as data [`decode::register_map`].
//! - [`normalize`]: decode + registry + time checks and the flood limit for one message, with
//!   rejection counters; [`normalize::config`] the `[decode]` limits.
//! - [`buttons`]: what a button press means per device model (which presses call for help).
//! - [`sources`]: [`sources::mqtt`] the MQTT subscriber lanes, [`sources::broker`] the embedded
//!   broker, [`sources::serial`] the serial ports (Modbus RTU polling, radar frames, link
//!   state and counters).
//! - [`journal`]: the durable local store (SQLite): [`journal::writer`] group commit,
//!   [`journal::store`] schema and history queries, [`journal::recovery`] start-up check and
//!   salvage, [`journal::budget`] the disk budget, [`journal::lock`] one gateway per journal.
//! - [`influx`]: the InfluxDB v2 forwarder (cursor, batches, retries, quarantine):
//!   [`influx::client`], [`influx::line_protocol`].
//! - [`rules`]: the rule catalog ([`rules::catalog`]) and the stateful rules engine
//!   ([`rules::engine`], on the gateway clock) with what it tells the alerts ([`rules::output`]).
//! - [`alerts`]: the alert model, store, lifecycle (dedup, correlation, escalation, audit) and
//!   task, and its delivery ([`alerts::delivery`]: MQTT outbox, webhooks, server-sent events).
//! - [`api`]: HTTP: health, Prometheus metrics, devices, readings, alerts ([`api::alerts`]), the
//!   alert stream ([`api::stream`]) and the control room's views ([`api::control`]).
//! - [`auth`]: operator accounts, sessions, API tokens, roles and the login rate limit
//!   ([`auth::http`]: the login routes and middleware).
//! - [`web`]: the control-room page, embedded in the binary.
//! - [`supervise`]: self-supervision: MQTT silence, InfluxDB stalls, the journal's budget and
//!   recovery, clock jumps, journaled as readings of `gateway:*` devices for rules S2-S7.
//! - [`telemetry`]: the gateway's shared counters and `/metrics`; stages with counters of their
//!   own register a [`telemetry::MetricsSource`].
//! - [`clock`]: the system clock or the shared test clock.
//! - [`site_time`]: the site's local time (IANA zone with daylight saving) for night windows
//!   and shifts.
//! - [`app`]: wiring the stages together (one builder per stage), start and shutdown.
//! - [`stages`]: stage supervision: a stage that panics or ends while running stops the process.
//! - `demo`: the demo facility (`nh-gateway demo`), built with the `demo` feature only.

#![forbid(unsafe_code)]

pub mod access;
pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod buttons;
pub mod clock;
pub mod config;
pub mod decode;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diagnostics;
pub mod influx;
pub mod journal;
pub mod normalize;
pub mod provisioning;
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
