namespace qfair { int core_placeholder() { return 0; } }
