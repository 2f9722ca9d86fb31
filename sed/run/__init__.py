"""Running a job: the configuration schema, the train/resume/test run, run directories, checkpoints and signals,
callbacks and loggers, the console and the memory allocator."""
