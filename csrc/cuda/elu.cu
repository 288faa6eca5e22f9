#include "elu.cuh"
