//! The device model: what the simulated devices are (the registry), what they report and how
//! their values move (behaviour; the values are [`crate::metrics`]), when they report (schedule), and the registry of a
//! demo facility. Pure: nothing here talks to a broker or a port.

pub mod behaviour;
pub mod facility;
pub mod registry;
pub mod schedule;
