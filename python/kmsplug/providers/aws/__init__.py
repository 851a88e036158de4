"""AWS KMS: `settings` (from the environment), `kek` (the provider, its boto3 client,
and `build`)."""
