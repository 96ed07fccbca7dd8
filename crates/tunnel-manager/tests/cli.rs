//! The command-line contract of every controller (see `multivpc_e2e::cli`).

const BINARY: &str = env!("CARGO_BIN_EXE_tunnel-manager");

#[test]
fn help_lists_the_common_flags() {
    multivpc_e2e::cli::assert_help_lists_common_flags(BINARY);
}

#[test]
fn unreachable_cluster_is_one_line_and_exit_1() {
    multivpc_e2e::cli::assert_unreachable_cluster_is_one_line("tunnel-manager", BINARY);
}
