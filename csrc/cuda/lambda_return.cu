#include "lambda_return.cuh"
