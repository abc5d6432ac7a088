//! End-to-end tests: real gateway, simulator, brokers and database processes on loopback.
//!
//! - `pipeline`: simulator -> broker (embedded, or Mosquitto) -> journal -> VictoriaMetrics, and
//!   the local history API without a database.
//! - `alert_lifecycle`: escalation and acknowledgement; restart mid-window on the same timeline.
//! - `chaos`: zero loss under SIGKILLs and broker/database outages; the embedded-mode loss window.
//! - `capture`: `nh-sim record` and `replay` round trip between two Mosquitto brokers.
//! - `replay_fixture`: the recorded, anonymized demo shift of `tests/fixtures/` replayed at 20x
//!   raises exactly its alerts, and anonymized once more the same ones.
//! - `bad_input`: malformed payloads are counted, never cost good readings or the connection.
//! - `influx_faults`: retries, splitting and quarantine of the InfluxDB forwarder.
//! - `scenarios`: every scenario of `config/scenarios/` against the real gateway on the test clock.
//! - `serial`: Modbus RTU gas detectors and an MR60FDA1 radar on pseudo-terminals from `nh-sim serial`.
//! - `browser`: the control-room page in a real headless Chromium over WebDriver.
//! - `docs`: the documents match the code (rules, configuration keys), nothing points outside
//!   the repository, and the README's first site runs as written.
//! - `config_files`: every file under `config/` is validated by the program that reads it.
//! - `process`: one gateway per journal, a dying stage stops the process, unclean starts.
//! - `memory`: RSS stays bounded under steady load with the embedded broker's log capped.
//! - `mqtt_access`: MQTT identities and their rights with third-party clients: refused CONNECTs,
//!   spoofed publishes and wills, the preheat attack, a Zigbee2MQTT bridge, Mosquitto on the
//!   generated files, and 2,000 devices reconnecting after a restart.
//! - `login_lockout`: wrong passwords lock a name out at one address only; the nurse logs in from
//!   another at once; the lockout is audited and raises S8's P3 entry.

mod alert_lifecycle;
mod bad_input;
mod browser;
mod capture;
mod chaos;
mod config_files;
mod docs;
mod influx_faults;
mod login_lockout;
mod memory;
mod mqtt_access;
mod pipeline;
mod process;
mod replay_fixture;
mod scenarios;
mod serial;
