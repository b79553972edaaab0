"""Stand-ins the tests drive the execution systems against without root: a batch scheduler with
Slurm's, Torque's and Grid Engine's commands (:mod:`tests.support.fake_scheduler`) and a DRMAA
binding over it (:mod:`tests.support.fake_drmaa`). Also what the tests share with the benchmarks
(``benchmarks/``): the test clusters' environment (:mod:`tests.support.cluster_env`) and a
saturated Local system (:mod:`tests.support.local_slots`)."""
