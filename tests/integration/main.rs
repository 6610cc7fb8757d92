//! Black-box tests on the built `webjobs` binary with real bash, python3 and
//! node jobs. One test binary; modules are named after the product's sections.

mod helper;

mod api;
mod chain;
mod cli;
mod config;
mod containment;
mod continuous;
mod dashboard;
mod events;
mod inbox;
mod inprocess;
mod kudu;
mod logs;
mod notify;
mod operator;
mod package;
mod pg;
mod postgres;
mod processes;
mod queue;
mod quickstart;
mod singleton;
mod systemd;
mod triggered;
mod watching;
