"""Pure domain logic. Never imports faust, redis, aiokafka or prometheus_client."""
