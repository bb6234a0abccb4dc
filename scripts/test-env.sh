# Environment of the private test stack (sourced by scripts/test.sh): its own
# ports, data and logs under var/test, so `make test` never touches the data
# of `make run`. A developer's .env is not read. The ports are below Linux's
# ephemeral range (32768-60999), where an outgoing connection could hold one.
export CCM_ENV_FILE=/dev/null
export CCM_VAR_DIR=var/test
export CCM_PG_FAST=1
export CCM_REDIS_EPHEMERAL=1
export DB_HOST=127.0.0.1
export DB_PORT=25432
export DB_NAME=ccm_test
export DB_USER=campaign_user
export DB_PASSWORD=
export REDIS_URL=redis://127.0.0.1:26379/0
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092
export KAFKA_CONTROLLER_PORT=29093
export GRPC_PORT=25051
export HTTP_PORT=28000
export MOCK_PORT=28001
export LOG_DIR=var/test/logs
export LOG_LEVEL=info
export AUTH_ENABLED=true
export VALID_TOKENS=dev-token-12345,another-token-67890
export RETRY_SCHEDULE_CONFIG_PATH=config/retry_config.yaml
unset DATABASE_URL GRPC_TARGET EXTERNAL_SERVICE_URL CALLBACK_URL
