"""One attempt of a job, watched from the node: supervise, fence, commit, relay output."""
