mod nar;
