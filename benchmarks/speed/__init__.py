"""What things cost: the teacher bank, exact evaluation at SOP's size, exported models, the input pipeline."""
