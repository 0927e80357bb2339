"""gRPC servicers, one per API service; they validate, decide and record, the reconciler acts."""
