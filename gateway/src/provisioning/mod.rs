//! Provisioning MQTT identities: `nh-gateway device-credentials` ([`provision`]: new secrets,
//! their hashes in the credentials file, the secrets once on stdout or in a provisioning file)
//! and `nh-gateway mosquitto-config` ([`mosquitto`]: the same identities and rights as
//! Mosquitto's password and ACL files, for the external broker mode). Above `access` and
//! `config`: it reads a whole site configuration.

pub mod mosquitto;
pub mod provision;
