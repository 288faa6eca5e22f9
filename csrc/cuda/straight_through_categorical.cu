#include "straight_through_categorical.cuh"
