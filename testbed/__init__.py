"""Process helpers shared by the tests and the benchmarks: the app under `serve run`, a throwaway redis-server."""
