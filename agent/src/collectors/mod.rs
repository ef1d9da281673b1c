//! Collectors: what the system under test does while tests run, recorded as events through the spool
//! (never blocking the runner). Each starts on its own and fails on its own: a bus that cannot be reached
//! or a watched path that does not exist is logged, and the others carry on.
//!
//! May import the spool, the agent's config and `shared`; never the runner or the session (a collector
//! only emits events).

pub mod dbus;
pub mod emit;
pub mod emit_websocket;
pub mod files;
pub mod packages;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::AgentConfig;
use crate::spool::SharedSpool;

pub fn start(config: &AgentConfig, spool: &SharedSpool, shutdown: &CancellationToken) {
    let events = &config.events;
    if let Some(address) = &events.dbus_address {
        dbus::start(
            address.clone(),
            events.dbus_match.clone(),
            spool.clone(),
            shutdown.clone(),
        );
    }
    if !events.watch.is_empty() {
        let watch = files::FileWatch {
            paths: events.watch.clone(),
            recursive: events.watch_recursive,
            include: events.watch_include.clone(),
            exclude: events.watch_exclude.clone(),
            debounce: events.watch_debounce,
        };
        if let Err(err) = files::start(watch, spool.clone(), shutdown.clone()) {
            warn!(error = %err, "file events: not started");
        }
    }
    if let Some(dbpath) = &events.rpm_dbpath {
        packages::start(
            packages::Source::Rpm {
                dbpath: dbpath.clone(),
            },
            spool.clone(),
            shutdown.clone(),
        );
    }
    if let Some(status) = &events.dpkg_status {
        packages::start(
            packages::Source::Dpkg {
                status: status.clone(),
            },
            spool.clone(),
            shutdown.clone(),
        );
    }
    if let Some(socket) = &events.emit_socket {
        match emit::bind(socket) {
            Ok(listener) => {
                tokio::spawn(emit::serve(
                    listener,
                    socket.clone(),
                    spool.clone(),
                    shutdown.clone(),
                ));
            }
            Err(err) => warn!(error = %err, "custom events: cannot open the socket"),
        }
    }
    if let Some(address) = events.emit_websocket {
        match std::net::TcpListener::bind(address).and_then(|listener| {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        }) {
            Ok(listener) => {
                tokio::spawn(emit_websocket::serve(
                    listener,
                    spool.clone(),
                    shutdown.clone(),
                ));
            }
            Err(err) => {
                warn!(address = %address, error = %err, "browser bridge: cannot listen")
            }
        }
    }
}
