"""Fisher-matrix methods: output families, Fisher products, Fisher scoring."""
