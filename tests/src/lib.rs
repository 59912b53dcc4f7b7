//! The hostbus integration test harness. Cross-crate tests live in `tests/`
//! beside this file; the harness that starts private RabbitMQ nodes and agent
//! processes lands here with issue 4.
