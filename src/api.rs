//! The gRPC API (package `hostagent.v1`), generated from proto/hostagent.proto at build
//! time: messages, the server trait agentd implements and the client agentctl uses.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("hostagent.v1");
